"""Train a reward model of any registered type on a real LM: same data, loss and optimiser for all
(theory/README.md §1, §5). Computation only; ``lm_probes.reports.write_training`` writes the files.

    result = train_reward_model(lm, train_pairs, {"test": test_pairs}, TrainConfig(objective="im_rm"))
    result.summary["final"]["test"][ACCURACY];  result.rewards["test"]   # (N, 2) array (evaluation.ACCURACY)

Objectives are the entries of the reward registry (lm_probes.rm.rewards: ex_rm, ex_rm_mean, im_rm,
im_rm_no_ref, ...), all scored through lm_probes.lm.scoring.score, the probes' scoring path; the model
trained is a lm_probes.rm.reward_model.RewardModel. Adam, gradient accumulation (``batch_size`` pairs per
step in micro-batches of ``micro_batch``), length-bucketed micro-batches, seeded, reference log-probs
computed once before training, a checkpoint after every epoch in ``checkpoint_dir`` (``resume=True``
continues from it, reference tables included). Metrics per
named evaluation set after every epoch (and before training, epoch 0): lm_probes.rm.evaluation.METRICS,
TRL's names with TRL's meanings (loss, rewards/accuracies, strict; rewards/chosen, rewards/rejected,
rewards/margins) and rmgap's own (rmgap/accuracy_half_ties, the paper's accuracy; rmgap/tie_rate,
rmgap/normalized_abs_margin). Under accelerate
(``runtime``: lm_probes.distributed) several processes share each step, the reference and the
evaluation; checkpoints (lm_probes.rm.checkpoints) resume under any process count.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.profiler import record_function

from lm_probes.common import progress, tune_malloc, write_text
from lm_probes.data.pairs import EncodedPairs, Pair, encode_pairs
from lm_probes.distributed import Runtime
from lm_probes.lm.encoding import Encoded
from lm_probes.lm.loading import LoadedLM
from lm_probes.rm.checkpoints import digest, restore_checkpoint, save_checkpoint, weights_digest
from lm_probes.rm.config import TrainConfig
from lm_probes.rm.evaluation import evaluate_sets
from lm_probes.rm.reward_model import RewardModel
from lm_probes.rm.rewards import RewardType, get_reward_type

# the parts of a run that train_seconds and reference_seconds time, as torch.profiler ranges
TIMED_LABELS = ("rmgap.reference", "rmgap.train_epoch")


def adam(params, lr: float) -> torch.optim.Adam:
    """torch.optim.Adam, fused where torch has a kernel for the parameters' device (CPU since torch
    2.4): one pass over each parameter instead of the default loop of element-wise ops on CPU
    (9.3× less time per step at 302 M parameters: benchmarks/results/adam.json); plain otherwise."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):  # (no fused kernel here: older torch, other devices)
        return torch.optim.Adam(params, lr=lr)


def length_buckets(
    pairs: list[tuple[Encoded, Encoded]], micro: int, rng: np.random.Generator
) -> list[list[int]]:
    """Micro-batches of pairs of similar length (less padding), in a seeded random order."""
    order = sorted(
        range(len(pairs)),
        key=lambda i: (len(pairs[i][0].input_ids) + len(pairs[i][1].input_ids), rng.random()),
    )
    batches = [order[i : i + micro] for i in range(0, len(order), micro)]
    return [batches[i] for i in rng.permutation(len(batches))]


@dataclass
class TrainResult:
    summary: dict  # config, model, final and per-epoch metrics, counts, timings
    rewards: dict[str, np.ndarray] = field(default_factory=dict)  # set → (N, 2) final rewards
    token_rewards: dict[str, list] = field(default_factory=dict)  # set → per-pair per-token terms
    eval_pairs: dict[str, list[Pair]] = field(default_factory=dict)  # set → the pairs kept, in order


def encode_for_training(
    lm: LoadedLM, pairs: list[Pair], cfg: TrainConfig, rt: RewardType | None = None
) -> EncodedPairs:
    """``pairs`` encoded as training encodes them under ``cfg`` (chat template, length rules, and the
    verbalizer of ``rt``, the reward type the run resolved; default: the one ``cfg`` names)."""
    rt = rt or get_reward_type(cfg.objective)
    return encode_pairs(
        lm.tokenizer,
        pairs,
        chat_template=cfg.chat_template,
        max_length=cfg.max_length or lm.info.get("max_positions"),
        max_part_length=cfg.max_part_length,
        verbalize=rt.verbalize,
    )


@dataclass
class _Encoded:
    """A run's data as training sees it: encoded, with what the length and identity rules dropped."""

    train: list[tuple[Encoded, Encoded]]
    rewrites: list | None  # per training pair, its encoded rewrite or None (the consistency term)
    evals: dict[str, list[tuple[Encoded, Encoded]]]
    eval_pairs: dict[str, list[Pair]]
    dropped: dict[str, dict]


def _encode_run(lm, train: list[Pair], eval_sets: dict, cfg: TrainConfig, rt: RewardType) -> _Encoded:
    enc = encode_for_training(lm, train, cfg, rt)
    if not enc.encodings:
        raise ValueError(f"no usable training pair: {enc.n_dropped()} dropped {enc.dropped}")
    data = _Encoded(enc.encodings, None, {}, {}, {"train": enc.dropped})
    if cfg.consistency:  # the rewrite of each kept pair, dropped by the same rules
        data.rewrites = []
        for p in enc.kept:
            rw = [Pair(p.prompt, *p.rewrite, p.group, f"{p.where} (rewrite)")] if p.rewrite else None
            e = encode_for_training(lm, rw, cfg, rt) if rw else None
            data.rewrites.append(e.encodings[0] if e and e.encodings else None)
        if not any(data.rewrites):
            raise ValueError(
                "consistency needs training pairs with usable rewrites (Pair.rewrite); none has one"
            )
    for name, pairs in eval_sets.items():
        e = encode_for_training(lm, pairs, cfg, rt)
        data.evals[name], data.eval_pairs[name], data.dropped[name] = e.encodings, e.kept, e.dropped
        if not e.encodings:
            raise ValueError(f"evaluation set {name!r}: every pair was dropped {e.dropped}")
    return data


RESERVED = ("epoch", "train_loss")  # history keys beside the evaluation sets' names


def _encodings_digest(encs: list[tuple[Encoded, Encoded]]) -> str:
    return digest([(np.asarray(e.input_ids, dtype=np.int64), e.prompt_len) for pr in encs for e in pr])


def run_identity(rm: RewardModel, data: _Encoded, runtime: Runtime) -> dict:
    """What a resume must find unchanged (lm_probes.rm.checkpoints.check_run): digests of the encoded
    training pairs (and rewrites), of every evaluation set, of the model's weights at θ0; the mixed
    precision."""
    rewrites = [w for w in data.rewrites or [] if w]
    return {
        "train": _encodings_digest(data.train + rewrites),
        "eval": {n: _encodings_digest(e) for n, e in data.evals.items()},
        "model": weights_digest(rm.model),
        "mixed_precision": runtime.mixed_precision,
    }


def _resume(ckpt: Path, rm: RewardModel, opt, data: _Encoded, run: dict) -> tuple[list, int, float | None]:
    """(history, last finished epoch, its loss if its evaluation is pending) from ``ckpt``, refused
    where it was written by another run or its reference tables do not cover this run's pairs."""
    history, start_epoch, pending_loss = restore_checkpoint(ckpt, rm, opt, run)
    sets = {
        "training set": (data.train, rm.ref),
        **{f"evaluation set {n!r}": (v, rm.ref_eval) for n, v in data.evals.items()},
    }
    for name, (encs, table) in sets.items():
        if rm.rt.uses_reference and any(e.input_ids not in table for pr in encs for e in pr):
            raise ValueError(f"{ckpt}: written for other data than this run's {name}; refusing to resume")
    return history, start_epoch, pending_loss


@record_function(TIMED_LABELS[1])  # (a profiler range, per call)
def _train_epoch(
    rm: RewardModel, wrapped, opt, data: _Encoded, cfg: TrainConfig, epoch: int, runtime: Runtime
) -> float:
    """One epoch of optimiser steps; → the mean pair loss over its micro-batches."""
    tr, rewrites = data.train, data.rewrites
    rm.model.train()
    batches = length_buckets(tr, cfg.micro_batch, np.random.default_rng([cfg.seed, epoch]))
    accum = cfg.batch_size // cfg.micro_batch
    steps = [list(range(i, min(i + accum, len(batches)))) for i in range(0, len(batches), accum)]
    losses = {}  # micro-batch index → its mean pair loss
    desc, show = f"{cfg.objective} epoch {epoch} (steps)", cfg.progress and runtime.is_main
    for step in progress(steps, desc, enabled=show, total=len(steps)):
        # this process's micro-batches; past the n real ones, zero-weighted repeats (one where none is
        # left for it; under a sharded back end, as many as the others make)
        mine, n = runtime.share(step, minimum=1)
        for k, j in enumerate(mine):
            weight = 1.0 if k < n else 0.0
            b = batches[j]
            gen = None  # token dropout's masks, seeded per (seed, epoch, micro-batch)
            if cfg.token_dropout:
                gen = torch.Generator().manual_seed(
                    int(np.random.default_rng([cfg.seed, epoch, j]).integers(2**62))
                )
            with runtime.no_sync(wrapped) if k < len(mine) - 1 else contextlib.nullcontext():
                loss = wrapped([tr[i] for i in b], rewrites and [rewrites[i] for i in b], gen)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"{cfg.objective}: loss is {loss.item()} at epoch {epoch}, micro-batch {j} "
                        f"(pairs {[tr[i][0].where for i in b][:3]}…); lower --lr or check the data"
                    )
                # DDP averages over processes: × world gives the one-process sum over the step
                runtime.backward(loss * (weight * runtime.world) / cfg.batch_size)
            if weight:
                losses[j] = loss.item() / len(b)
        opt.step()
        opt.zero_grad(set_to_none=True)
    losses = runtime.merge(losses)
    rm.model.eval()
    return float(np.mean([losses[j] for j in sorted(losses)]))


def train_reward_model(
    lm: LoadedLM,
    train: list[Pair],
    eval_sets: dict[str, list[Pair]],
    cfg: TrainConfig,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    runtime: Runtime | None = None,
) -> TrainResult:
    """Train one reward model; evaluate every set after every epoch (and before training, epoch 0).
    ``runtime`` (lm_probes.distributed; default: one plain process) shards the work over processes.
    Pairs too long for the context or with identical responses are left out and listed in
    ``summary["dropped"]``."""
    runtime = runtime or Runtime()
    rt = cfg.check(sharded=runtime.lockstep)  # the reward type, resolved once for the run
    if clash := [n for n in eval_sets if n in RESERVED]:
        raise ValueError(f"evaluation set name {clash[0]!r} is reserved (a history key); name it otherwise")
    tune_malloc()  # (speed only: activations reallocated every step stay in the process)
    torch.manual_seed(cfg.seed)
    rm = RewardModel(lm, cfg, runtime, rt)
    data = _encode_run(lm, train, eval_sets, cfg, rt)
    identity = run_identity(rm, data, runtime)  # (θ0: before any update)
    ckpt = Path(checkpoint_dir) / "checkpoint.pt" if checkpoint_dir else None
    resuming = bool(resume and ckpt and ckpt.exists())
    t_ref = time.perf_counter()  # before any update: π_ref is the initial model
    if not resuming or cfg.token_dropout:  # (a checkpoint holds the tables, not the per-token terms)
        with record_function(TIMED_LABELS[0]):  # (labels for profilers: benchmarks/_limit.py)
            rm.fill_reference([e for pr in [*data.train, *(w for w in data.rewrites or [] if w)] for e in pr])
    reference_s = time.perf_counter() - t_ref
    if not resuming:
        rm.fill_eval_reference(data.evals)
    opt = adam(rm.trainable(), cfg.lr)
    # (one plain process: rm and opt themselves). A type that reads no logits leaves an untied head unused
    head = rm.model.get_output_embeddings().weight
    unused = not rt.needs_logits and head.requires_grad and head is not rm.model.get_input_embeddings().weight
    wrapped, opt = runtime.prepare(rm, opt, find_unused=unused)
    history, start_epoch, pending_loss = [], 0, None
    if resuming:  # (into the prepared model: a sharded one loads its shards; and the reference tables)
        history, start_epoch, pending_loss = _resume(ckpt, rm, opt, data, identity)

    def log(epoch, train_loss, evaluate=True, tokens=False):
        res = evaluate_sets(rm, data.evals, epoch, tokens) if evaluate else {}
        history.append({"epoch": epoch, "train_loss": train_loss, **{n: v.metrics for n, v in res.items()}})
        if ckpt and runtime.is_main:
            write_text(ckpt.parent / "history.json", json.dumps(history))
        return res

    if not history and cfg.eval_every_epoch:
        log(0, None)
    if pending_loss is not None and start_epoch < cfg.epochs:  # stopped in an earlier epoch's evaluation
        log(start_epoch, pending_loss, cfg.eval_every_epoch)
        pending_loss = None
    final, t0, train_s = None, time.perf_counter(), 0.0
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        t_epoch = time.perf_counter()
        train_loss = _train_epoch(rm, wrapped, opt, data, cfg, epoch, runtime)
        train_s += time.perf_counter() - t_epoch
        if ckpt:  # before the evaluation: a run stopped there keeps its weights (the main process writes)
            save_checkpoint(ckpt, rm, opt, history, epoch, train_loss, runtime.is_main, identity)
        last = epoch == cfg.epochs
        res = log(epoch, train_loss, last or cfg.eval_every_epoch, last and cfg.token_rewards)
        final = res if last else None
        runtime.barrier()  # (every process sees the checkpoint before it goes on)
    if final is None and pending_loss is not None:  # resumed into the last epoch's evaluation
        final = log(cfg.epochs, pending_loss, True, cfg.token_rewards)
    elif final is None:  # resumed after the last epoch (or no epoch to run)
        final = evaluate_sets(rm, data.evals, cfg.epochs, cfg.token_rewards)
    summary = {
        "config": asdict(cfg),
        "reward_type": rt.summary,
        "model": lm.info,
        "final": {n: v.metrics for n, v in final.items()},
        "history": history,
        "n_train_pairs": len(data.train),
        "dropped": data.dropped,
        "seconds": time.perf_counter() - t0,
        "train_seconds": train_s,  # optimiser epochs only
        "reference_seconds": reference_s,  # ln π_ref of the training set (~0 without a reference)
        "processes": runtime.world,  # (lm_probes.distributed)
        "mixed_precision": runtime.mixed_precision,
        "digests": identity,  # of the data, evaluation sets and initial weights (what a resume checks)
    }
    rewards = {n: v.rewards for n, v in final.items()}
    tokens = {n: v.token_rewards for n, v in final.items() if v.token_rewards is not None}
    return TrainResult(summary, rewards, token_rewards=tokens, eval_pairs=data.eval_pairs)
