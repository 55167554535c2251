"""Train a reward model of any registered type on a real LM: same data, loss and optimiser for all
(theory/README.md §1, §5). Computation only; ``lm_probes.reports.write_training`` writes the files.

    result = train_reward_model(lm, train_pairs, {"test": test_pairs}, TrainConfig(objective="im_rm"))
    result.summary["final"]["test"]["rewards/accuracies"];  result.rewards["test"]   # (N, 2) array

Objectives are the entries of the reward registry (lm_probes.rewards: ex_rm, ex_rm_mean, im_rm,
im_rm_no_ref, ...), all scored through lm_probes.scoring.score, the probes' scoring path; the model
trained is a lm_probes.reward_model.RewardModel. Adam, gradient accumulation (``batch_size`` pairs per
step in micro-batches of ``micro_batch``), length-bucketed micro-batches, seeded, reference log-probs
computed once before training, a checkpoint after every epoch in ``checkpoint_dir`` (``resume=True``
continues from it, reference tables included). Metrics per
named evaluation set after every epoch (and before training, epoch 0), with TRL's names: loss,
rewards/accuracies (ties as ½, as the paper's code), rewards/accuracies_strict, rewards/tie_rate,
rewards/chosen, rewards/rejected, rewards/margins, rewards/normalized_abs_margin. Under accelerate
(``runtime``: lm_probes.distributed) several processes share each step, the reference and the
evaluation; checkpoints (lm_probes.checkpoints) resume under any process count.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from lm_probes.checkpoints import restore_checkpoint, save_checkpoint
from lm_probes.common import progress, tune_malloc
from lm_probes.data import EncodedPairs, Pair, encode_pairs
from lm_probes.distributed import Runtime
from lm_probes.evaluation import evaluate_sets
from lm_probes.loading import LoadedLM
from lm_probes.mitigations import FREEZE
from lm_probes.reward_model import RewardModel
from lm_probes.rewards import get_reward_type
from lm_probes.scoring import Encoded


@dataclass(frozen=True)
class TrainConfig:
    objective: str = "im_rm"
    epochs: int = 1
    lr: float = 1e-6
    beta: float = 0.01
    batch_size: int = 32  # pairs per optimiser step (effective batch)
    micro_batch: int = 8  # pairs per forward/backward
    seed: int = 0
    head_seed: int | None = None  # seed of the EX head's initial value (default: seed)
    chat_template: bool = True
    max_length: int | None = None  # default: the model's context
    max_part_length: int | None = None  # drop pairs whose prompt or a response is longer (paper: 512)
    eval_every_epoch: bool = True  # False: evaluate once, after the last epoch
    token_rewards: bool = False  # keep the per-token split of the final rewards (types that have one)
    progress: bool = True
    # mitigations (lm_probes.mitigations): drop each per-token reward term with this probability
    # (rescaled; training only), the rewrite-consistency weight λ, what stays fixed, the L2 pull λ of
    # the output head toward its initial value
    token_dropout: float = 0.0
    consistency: float = 0.0
    freeze: str | None = None
    unembedding_l2: float = 0.0

    def check(self, sharded: bool = False) -> None:
        """Refuse options that cannot apply (a ValueError naming the option); ``sharded``: under a fully
        sharded back end (lm_probes.distributed)."""
        rt = get_reward_type(self.objective)
        if self.batch_size % self.micro_batch:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of micro_batch ({self.micro_batch})"
            )
        if not 0.0 <= self.token_dropout < 1.0:
            raise ValueError(f"token_dropout must be in [0, 1), got {self.token_dropout}")
        if self.token_dropout and rt.token_rewards is None:
            raise ValueError(f"token_dropout needs a reward that is a sum over tokens; {rt.name} is not")
        if self.consistency < 0 or self.unembedding_l2 < 0:
            raise ValueError("consistency and unembedding_l2 must be ≥ 0")
        if self.freeze not in (None, *FREEZE):
            raise ValueError(f"freeze must be one of {', '.join(FREEZE)}, got {self.freeze!r}")
        if sharded and self.unembedding_l2:
            raise ValueError("unembedding_l2 (the L2 pull of the head) is not run under a sharded back end")


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


def encode_for_training(lm: LoadedLM, pairs: list[Pair], cfg: TrainConfig) -> EncodedPairs:
    """``pairs`` encoded as training encodes them under ``cfg`` (chat template, length rules, verbalizer)."""
    return encode_pairs(
        lm.tokenizer,
        pairs,
        chat_template=cfg.chat_template,
        max_length=cfg.max_length or lm.info.get("max_positions"),
        max_part_length=cfg.max_part_length,
        verbalize=get_reward_type(cfg.objective).verbalize,
    )


def _encode_rewrites(lm: LoadedLM, kept: list[Pair], cfg: TrainConfig) -> list:
    """Encoded (chosen, rejected) rewrite of each kept training pair (None where it has none, or where
    the rewrite is dropped by the same rules); the consistency term needs at least one."""
    out = []
    for p in kept:
        enc = (
            encode_for_training(lm, [Pair(p.prompt, *p.rewrite, p.group, f"{p.where} (rewrite)")], cfg)
            if p.rewrite
            else None
        )
        out.append(enc.encodings[0] if enc and enc.encodings else None)
    if not any(out):
        raise ValueError("consistency needs training pairs with usable rewrites (Pair.rewrite); none has one")
    return out


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
    cfg.check(sharded=runtime.lockstep)
    tune_malloc()  # (speed only: activations reallocated every step stay in the process)
    torch.manual_seed(cfg.seed)
    rm = RewardModel(lm, cfg, runtime)
    enc_train = encode_for_training(lm, train, cfg)
    tr, dropped = enc_train.encodings, {"train": enc_train.dropped}
    if not tr:
        raise ValueError(f"no usable training pair: {enc_train.n_dropped()} dropped {enc_train.dropped}")
    rewrites = _encode_rewrites(lm, enc_train.kept, cfg) if cfg.consistency else None
    ev, ev_pairs = {}, {}
    for name, pairs in eval_sets.items():
        e = encode_for_training(lm, pairs, cfg)
        ev[name], ev_pairs[name], dropped[name] = e.encodings, e.kept, e.dropped
        if not e.encodings:
            raise ValueError(f"evaluation set {name!r}: every pair was dropped {e.dropped}")
    ckpt = Path(checkpoint_dir) / "checkpoint.pt" if checkpoint_dir else None
    resuming = bool(resume and ckpt and ckpt.exists())
    t_ref = time.perf_counter()  # before any update: π_ref is the initial model
    if not resuming or cfg.token_dropout:  # (a checkpoint holds the tables, not the per-token terms)
        rm.fill_reference([e for pr in [*tr, *(w for w in rewrites or [] if w)] for e in pr])
    reference_s = time.perf_counter() - t_ref
    if not resuming:
        rm.fill_eval_reference(ev)
    opt = torch.optim.Adam(rm.trainable(), lr=cfg.lr)
    # (one plain process: rm and opt themselves). A type that reads no logits leaves an untied head unused
    head = rm.model.get_output_embeddings().weight
    unused = (
        not rm.rt.needs_logits and head.requires_grad and head is not rm.model.get_input_embeddings().weight
    )
    wrapped, opt = runtime.prepare(rm, opt, find_unused=unused)
    history, start_epoch, pending_loss = [], 0, None
    if resuming:  # (into the prepared model: a sharded one loads its shards; and the reference tables)
        history, start_epoch, pending_loss = restore_checkpoint(ckpt, rm, opt)
        sets = {
            "training set": (tr, rm.ref),
            **{f"evaluation set {n!r}": (v, rm.ref_eval) for n, v in ev.items()},
        }
        for name, (encs, table) in sets.items():
            if rm.rt.uses_reference and any(e.input_ids not in table for pr in encs for e in pr):
                raise ValueError(f"{ckpt}: written for other data than this run's {name}; refusing to resume")

    def log(epoch, train_loss, evaluate=True, tokens=False):
        res = evaluate_sets(rm, ev, epoch, tokens) if evaluate else {}
        history.append({"epoch": epoch, "train_loss": train_loss, **{n: v.metrics for n, v in res.items()}})
        return res

    if not history and cfg.eval_every_epoch:
        log(0, None)
    final = None
    accum = cfg.batch_size // cfg.micro_batch
    t0, train_s = time.perf_counter(), 0.0
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        t_epoch = time.perf_counter()
        rm.model.train()
        batches = length_buckets(tr, cfg.micro_batch, np.random.default_rng([cfg.seed, epoch]))
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
        train_s += time.perf_counter() - t_epoch
        rm.model.eval()
        train_loss = float(np.mean([losses[j] for j in sorted(losses)]))
        if ckpt:  # before the evaluation: a run stopped there keeps its weights (the main process writes)
            save_checkpoint(ckpt, rm, opt, history, epoch, train_loss, write=runtime.is_main)
        last = epoch == cfg.epochs
        res = log(epoch, train_loss, last or cfg.eval_every_epoch, last and cfg.token_rewards)
        final = res if last else None
        if ckpt and runtime.is_main:
            (ckpt.parent / "history.json").write_text(json.dumps(history))
        runtime.barrier()  # (every process sees the checkpoint before it goes on)
    if final is None and pending_loss is not None:  # resumed into the last epoch's evaluation
        final = log(cfg.epochs, pending_loss, True, cfg.token_rewards)
    elif final is None:  # resumed after the last epoch (or no epoch to run)
        final = evaluate_sets(rm, ev, cfg.epochs, cfg.token_rewards)
    summary = {
        "config": asdict(cfg),
        "reward_type": rm.rt.summary,
        "model": lm.info,
        "final": {n: v.metrics for n, v in final.items()},
        "history": history,
        "n_train_pairs": len(tr),
        "dropped": dropped,
        "seconds": time.perf_counter() - t0,
        "train_seconds": train_s,  # optimiser epochs only
        "reference_seconds": reference_s,  # ln π_ref of the training set (~0 without a reference)
        "processes": runtime.world,  # (lm_probes.distributed)
    }
    rewards = {n: v.rewards for n, v in final.items()}
    tokens = {n: v.token_rewards for n, v in final.items() if v.token_rewards is not None}
    return TrainResult(summary, rewards, token_rewards=tokens, eval_pairs=ev_pairs)
