"""Reward models people already have, scored with no training: the implicit reward of a policy LM
against its reference (DPO's β·ln π_θ(y|x)/π_ref(y|x) and the registry's variants), per example, with
the metrics of lm_probes.rm.evaluation and a bootstrap CI. Computation only; ``rmgap eval`` is the
command.

    res = score_existing(policy, ref, {"test": pairs}, reward="im_rm", beta=1.0)
    res["test"]["rewards"]     # (N, 2) chosen, rejected, of res["test"]["kept"] (the pairs scored)
    res["test"]["metrics"]     # lm_probes.rm.evaluation.METRICS, "ci95" and "dropped" (counts)

The reference log-probs are computed by ``ref`` in exactly the chunks the policy is scored in, so a
policy that is its own reference gives every reward exactly 0. Policy and reference must share a
tokenizer (a response is one token sequence under both); types with a head (the EX-RMs) need a
trained head, which a bare LM does not have, and are refused.
"""

from __future__ import annotations

import numpy as np
import torch

from lm_probes.data.pairs import Pair
from lm_probes.distributed import Runtime
from lm_probes.lm.encoding import Encoded, pad_id_of
from lm_probes.lm.loading import LoadedLM
from lm_probes.rm.config import TrainConfig
from lm_probes.rm.evaluation import ACCURACY, EVAL_TOKENS, evaluate_sets, reward_metrics
from lm_probes.rm.reward_model import RewardModel
from lm_probes.rm.rewards import get_reward_type
from lm_probes.rm.trainer import encode_for_training
from lm_probes.stats import paired_bootstrap_ci
from theory import pair_outcomes

IMPLICIT_DEFAULT_BETA = 1.0  # RewardBench's DPO scores sum the log-ratios (β = 1); DPO trains with β ≈ 0.1


def score_existing(
    policy: LoadedLM,
    ref: LoadedLM | None,
    sets: dict[str, list[Pair]],
    *,
    reward: str = "im_rm",
    beta: float = IMPLICIT_DEFAULT_BETA,
    chat_template: bool = True,
    n_boot: int = 10_000,
    runtime: Runtime | None = None,
) -> dict:
    """Per set: ``rewards`` (N, 2), ``kept`` (the N pairs scored: identical or too-long pairs are left
    out and counted in ``metrics["dropped"]``) and ``metrics`` (METRICS, and ``ci95``: percentile-
    bootstrap CIs over pairs of the strict accuracy and of ACCURACY). ``runtime`` (lm_probes.distributed,
    under accelerate launch): each process scores its share of the sequences, and every process gets
    all rewards, the numbers one process gives."""
    rt = check_request(reward, ref_given=ref is not None, classifier=policy.info.get("classifier", False))
    if rt.uses_head:
        return _score_classifier(policy, sets, rt, chat_template, n_boot, runtime or Runtime())
    if rt.uses_reference and ref.tokenizer.get_vocab() != policy.tokenizer.get_vocab():
        raise ValueError("--model and --ref have different tokenizers: a response must be the same tokens")
    cfg = TrainConfig(objective=reward, beta=beta, chat_template=chat_template, progress=False)
    encoded = {name: encode_for_training(policy, pairs, cfg, rt) for name, pairs in sets.items()}
    ev = {name: e.encodings for name, e in encoded.items()}
    rm = RewardModel(policy, cfg, runtime=runtime, rt=rt)
    rm.model.eval()
    if rt.uses_reference:
        ref_rm = RewardModel(ref, cfg, runtime=runtime, rt=rt)
        ref_rm.model.eval()
        ref_rm.fill_eval_reference(ev)
        rm.ref_eval = ref_rm.ref_eval
    res = evaluate_sets(rm, ev)
    return {name: _result(r.rewards, r.metrics, encoded[name], n_boot) for name, r in res.items()}


def _result(rewards: np.ndarray, metrics: dict, encoded, n_boot: int) -> dict:
    metrics = {**metrics, "ci95": accuracy_cis(rewards, n_boot)}
    metrics["dropped"] = {k: len(v) for k, v in encoded.dropped.items()}
    # responses whose tokens would differ had prompt and response been tokenised as one string
    metrics["boundary_merged"] = sum(e.boundary_merged for pr in encoded.encodings for e in pr)
    return {"rewards": rewards, "kept": encoded.kept, "metrics": metrics}


def _score_classifier(clf: LoadedLM, sets, rt, chat_template: bool, n_boot: int, runtime: Runtime) -> dict:
    """An EX-RM that is a sequence classifier: each pair's two logits (classifier_rewards)."""
    cfg = TrainConfig(objective="ex_rm", chat_template=chat_template, progress=False)
    encoded = {name: encode_for_training(clf, pairs, cfg, rt) for name, pairs in sets.items()}
    values = classifier_rewards(
        clf, [e for enc in encoded.values() for pr in enc.encodings for e in pr], runtime=runtime
    )
    out = {}
    for name, enc in encoded.items():
        r = np.array([[values[c.input_ids], values[x.input_ids]] for c, x in enc.encodings], dtype=np.float64)
        out[name] = _result(r, reward_metrics(rt, r), enc, n_boot)
    return out


@torch.no_grad()
def classifier_rewards(
    clf: LoadedLM, encs: list[Encoded], max_tokens: int = EVAL_TOKENS, runtime: Runtime | None = None
) -> dict:
    """``{input_ids: logit}`` of each distinct encoding by the classifier's own forward: right-padded
    batches of similar length, attention masked, which its pooling (the last token that is not the
    pad token) reads as it reads each sequence alone; the batches shared out over ``runtime``'s
    processes, the logits gathered."""
    runtime = runtime or Runtime()
    pad = clf.model.config.pad_token_id
    pad = pad_id_of(clf.tokenizer) if pad is None else pad
    clf.model.config.pad_token_id = pad  # (a batch needs it; the pooling then finds each last token)
    distinct = sorted({e.input_ids for e in encs}, key=len)
    chunks, cur = [], []
    for seq in distinct:  # (ascending length: a chunk's last sequence is its longest)
        if cur and (len(cur) + 1) * len(seq) > max_tokens:
            chunks.append(cur)
            cur = []
        cur.append(seq)
    out = {}
    for chunk in runtime.shard([*chunks, cur] if cur else chunks):
        width = len(chunk[-1])
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, seq in enumerate(chunk):
            if seq[-1] == pad:
                raise ValueError("a sequence ends with the pad token: the classifier's pooling skips it")
            ids[i, : len(seq)], mask[i, : len(seq)] = torch.tensor(seq), 1
        logits = clf.model(input_ids=ids.to(clf.device), attention_mask=mask.to(clf.device)).logits
        out.update(zip(chunk, logits[:, 0].double().cpu().tolist(), strict=True))
    return runtime.merge(out)


def check_request(reward: str, ref_given: bool, classifier: bool = False):
    """The reward type ``reward`` names, refused in one line where the model cannot give it: a type
    with a head but a language model (``classifier``: a sequence classifier was given), a classifier
    but an implicit type, or a type that divides by a reference when none is given."""
    rt = get_reward_type(reward)
    if classifier != (reward == "ex_rm"):
        raise ValueError(
            f"--reward {reward}: a sequence classifier is an EX-RM (--reward ex_rm)"
            if classifier
            else f"--reward {reward}: an explicit RM reads a trained head, which a language model does "
            "not have; give --reward ex_rm a sequence classifier (an EX-RM rmgap exported, or any "
            "AutoModelForSequenceClassification), or a language model an implicit reward "
            "(im_rm, im_rm_no_ref, im_rm_mean, im_rm_mean_no_ref)"
        )
    if rt.uses_reference and not ref_given:
        raise ValueError(
            f"--reward {reward} divides by a reference model: give --ref (or use {reward}_no_ref)"
        )
    return rt


def accuracy_cis(rewards: np.ndarray, n_boot: int = 10_000) -> dict:
    """95 % percentile-bootstrap CIs over pairs of the strict accuracy and of the accuracy with ties
    as ½, from (N, 2) rewards (chosen, rejected)."""
    half = pair_outcomes(rewards[:, 0], rewards[:, 1])
    strict = (rewards[:, 0] > rewards[:, 1]).astype(float)
    zero = np.zeros(len(half))
    return {
        "rewards/accuracies": list(paired_bootstrap_ci(strict, zero, n_boot=n_boot)[1:]),
        ACCURACY: list(paired_bootstrap_ci(half, zero, n_boot=n_boot)[1:]),
    }
