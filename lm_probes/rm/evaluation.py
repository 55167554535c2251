"""Evaluation of a reward model on named sets of encoded pairs: metrics under TRL's names with TRL's
meanings and rmgap's own under ``rmgap/`` (``METRICS``), every distinct
encoding scored once (a prompt's KV cache shared by all its responses across sets, e.g. a test set and
its rewrites). Computation only; used by lm_probes.rm.trainer after every epoch and by the benchmarks.

    res = evaluate_sets(rm, {"test": [(chosen_enc, rejected_enc), ...]})     # rm: reward_model.RewardModel
    res["test"].metrics[ACCURACY];  res["test"].rewards             # (N, 2) array; ACCURACY: ties as ½
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lm_probes.lm.encoding import Encoded
from theory import accuracy

EVAL_TOKENS = 16384  # padded tokens per evaluation chunk
ACCURACY = "rmgap/accuracy_half_ties"  # the accuracy rmgap reports (and the paper's code): a tie counts ½
# every metric: TRL's names mean what DPOTrainer logs (rewards/accuracies: chosen > rejected, strict)
METRICS = {
    "loss": "the reward type's own training loss",
    "rewards/accuracies": "fraction of pairs with r(chosen) > r(rejected), strict (TRL, RewardBench)",
    "rewards/chosen": "mean r(chosen)",
    "rewards/rejected": "mean r(rejected)",
    "rewards/margins": "mean r(chosen) − r(rejected)",
    ACCURACY: "as rewards/accuracies with a tie counted ½",
    "rmgap/tie_rate": "fraction of pairs with r(chosen) == r(rejected)",
    "rmgap/normalized_abs_margin": "mean |margin| / std (ddof 1) of all 2N rewards (the paper's code)",
    "n": "pairs",
}
# files written before 2026-12-02 named the ½-ties accuracy rewards/accuracies (read by current_names)
_OLD_NAMES = {
    "rewards/accuracies": ACCURACY,
    "rewards/accuracies_strict": "rewards/accuracies",
    "rewards/tie_rate": "rmgap/tie_rate",
    "rewards/normalized_abs_margin": "rmgap/normalized_abs_margin",
}


def current_names(metrics: dict) -> dict:
    """Metrics under today's names (METRICS). A summary or history written before the rename (it has
    ``rewards/accuracies_strict``, and ``rewards/accuracies`` counted ties as ½) is renamed on reading,
    so no reader takes its ½-ties accuracy for TRL's strict one."""
    if "rewards/accuracies_strict" not in metrics:
        return metrics
    return {_OLD_NAMES.get(k, k): v for k, v in metrics.items()}


def reward_metrics(rt, r: np.ndarray, q: np.ndarray | None = None) -> dict:
    """The METRICS of (N, 2) rewards (chosen, rejected) under the reward type's own loss, which
    reads ``q`` (N, 2, ...) where the type has a ``loss_input`` and the rewards otherwise."""
    acc = accuracy(r[:, 0], r[:, 1])
    q = r if q is None else q
    qc, qr = torch.as_tensor(q[:, 0]), torch.as_tensor(q[:, 1])
    return {
        "loss": float(rt.loss(qc, qr).mean()),
        "rewards/accuracies": acc.strict,
        "rewards/chosen": float(r[:, 0].mean()),
        "rewards/rejected": float(r[:, 1].mean()),
        "rewards/margins": float((r[:, 0] - r[:, 1]).mean()),
        ACCURACY: acc.half_ties,
        "rmgap/tie_rate": acc.tie_rate,
        "rmgap/normalized_abs_margin": acc.normalized_abs_margin,
        "n": acc.n,
    }


def eval_chunks(ev: dict[str, list[tuple[Encoded, Encoded]]], max_tokens: int = EVAL_TOKENS) -> list[list]:
    """The distinct encodings of all evaluation sets, grouped by prompt across sets (a prompt's KV cache
    is computed once for every response to it, e.g. a test set and its rewrites), groups ordered by
    length and packed, whole groups at a time, into chunks of at most ``max_tokens`` padded tokens (a
    larger group is a chunk of its own). Deterministic in ``ev``."""
    by_prompt: dict[tuple, dict[tuple, Encoded]] = {}
    for pairs in ev.values():
        for pr in pairs:
            for e in pr:
                by_prompt.setdefault(e.input_ids[: e.prompt_len], {}).setdefault(e.input_ids, e)
    groups = sorted(by_prompt.values(), key=lambda g: max(len(k) for k in g))
    chunks, cur, longest = [], [], 0
    for group in groups:
        n, L = len(group), max(len(k) for k in group)
        if cur and (len(cur) + n) * max(longest, L) > max_tokens:
            chunks.append(cur)
            cur, longest = [], 0
        cur.extend(group.values())
        longest = max(longest, L)
    return [*chunks, cur] if cur else chunks


@dataclass
class SetEval:
    metrics: dict  # reward_metrics
    rewards: np.ndarray  # (N, 2) chosen, rejected
    token_rewards: list | None = None  # N × (chosen (K+,), rejected (K−,)) per-token terms, if kept


@torch.no_grad()
def evaluate_sets(
    rm, ev: dict[str, list[tuple[Encoded, Encoded]]], epoch: int | None = None, tokens=False
) -> dict[str, SetEval]:
    """Rewards and metrics of every evaluation set, scoring each distinct encoding once in the chunks of
    :func:`eval_chunks`; with ``tokens`` (and a reward type with ``token_rewards``) also the per-token
    terms of each reward."""
    values: dict[tuple, float] = {}
    toks: dict[tuple, np.ndarray] = {}
    qs: dict[tuple, np.ndarray] = {}  # what the loss reads, for types with a loss_input
    split = tokens and rm.rt.token_rewards is not None
    # one share per process, gathered below (past the n real chunks: repeats a sharded back end needs)
    chunks, n = rm.runtime.share(eval_chunks(ev))
    for k, chunk in enumerate(chunks):
        with rm.runtime.autocast():
            r, sc, params = rm(rewards_of=chunk, table=rm.ref_eval)
        if k >= n:
            continue
        if rm.rt.loss_input is not None:
            q = rm.rt.loss_values(r, sc, params).double().cpu().numpy()
            qs.update((e.input_ids, q[j]) for j, e in enumerate(chunk))
        for j, (e, v) in enumerate(zip(chunk, r.double().cpu().tolist(), strict=True)):
            values[e.input_ids] = v
            if split:
                ref = rm.ref_eval_tokens.get(e.input_ids)
                lp = sc.token_logprob[j].double().cpu().numpy()
                toks[e.input_ids] = rm.rt.token_rewards(lp, ref, rm.cfg.beta)
    values, toks, qs = (rm.runtime.merge(d) for d in (values, toks, qs))
    out = {}
    for name, pairs in ev.items():
        r = np.array([[values[c.input_ids], values[x.input_ids]] for c, x in pairs], dtype=np.float64)
        if not np.all(np.isfinite(r)):
            bad = int(np.argwhere(~np.isfinite(r))[0][0])
            raise FloatingPointError(
                f"{rm.cfg.objective}: non-finite reward on evaluation set {name!r} at epoch {epoch} "
                f"(first at {pairs[bad][0].where}); the model's weights or outputs are NaN/inf"
            )
        tr = [(toks[c.input_ids], toks[x.input_ids]) for c, x in pairs] if split else None
        q = np.array([[qs[c.input_ids], qs[x.input_ids]] for c, x in pairs]) if qs else None
        out[name] = SetEval(reward_metrics(rm.rt, r, q), r, tr)
    return out
