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

from lm_probes.data.pairs import Pair
from lm_probes.lm.loading import LoadedLM
from lm_probes.rm.config import TrainConfig
from lm_probes.rm.evaluation import ACCURACY, evaluate_sets
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
) -> dict:
    """Per set: ``rewards`` (N, 2), ``kept`` (the N pairs scored: identical or too-long pairs are left
    out and counted in ``metrics["dropped"]``) and ``metrics`` (METRICS, and ``ci95``: percentile-
    bootstrap CIs over pairs of the strict accuracy and of ACCURACY)."""
    rt = check_request(reward, ref_given=ref is not None)
    if rt.uses_reference and ref.tokenizer.get_vocab() != policy.tokenizer.get_vocab():
        raise ValueError("--model and --ref have different tokenizers: a response must be the same tokens")
    cfg = TrainConfig(objective=reward, beta=beta, chat_template=chat_template, progress=False)
    encoded = {name: encode_for_training(policy, pairs, cfg, rt) for name, pairs in sets.items()}
    ev = {name: e.encodings for name, e in encoded.items()}
    rm = RewardModel(policy, cfg, rt=rt)
    rm.model.eval()
    if rt.uses_reference:
        ref_rm = RewardModel(ref, cfg, rt=rt)
        ref_rm.model.eval()
        ref_rm.fill_eval_reference(ev)
        rm.ref_eval = ref_rm.ref_eval
    out = {}
    for name, r in evaluate_sets(rm, ev).items():
        metrics = {**r.metrics, "ci95": accuracy_cis(r.rewards, n_boot)}
        metrics["dropped"] = {k: len(v) for k, v in encoded[name].dropped.items()}
        out[name] = {"rewards": r.rewards, "kept": encoded[name].kept, "metrics": metrics}
    return out


def check_request(reward: str, ref_given: bool):
    """The reward type ``reward`` names, refused in one line where a bare LM cannot give it: a type
    with a head, or one that divides by a reference when none is given."""
    rt = get_reward_type(reward)
    if rt.uses_head:
        raise ValueError(
            f"--reward {reward}: an explicit RM reads a trained head, which a language model does not "
            "have; give an implicit reward (im_rm, im_rm_no_ref, im_rm_mean, im_rm_mean_no_ref)"
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
