"""Train a reward model of any registered type on a real LM: same data, loss and optimiser for all
(theory/README.md §1, §5). Computation only; ``lm_probes.reports.write_training`` writes the files.

    result = train_reward_model(lm, train_pairs, {"test": test_pairs}, TrainConfig(objective="im_rm"))
    result.summary["final"]["test"]["rewards/accuracies"];  result.rewards["test"]   # (N, 2) array

Objectives are the entries of the reward registry (lm_probes.rewards: ex_rm, ex_rm_mean, im_rm,
im_rm_no_ref, ...), all scored through lm_probes.scoring.score, the probes' scoring path. Adam,
gradient accumulation (``batch_size`` pairs per step in micro-batches of ``micro_batch``),
length-bucketed micro-batches, seeded, reference log-probs computed once before training, a
checkpoint after every epoch in ``checkpoint_dir`` (``resume=True`` continues from it). Metrics per
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
from lm_probes.evaluation import eval_chunks, evaluate_sets
from lm_probes.loading import LoadedLM
from lm_probes.mitigations import (
    FREEZE,
    consistency_penalty,
    freeze,
    token_dropout_reward,
    token_keep_masks,
    unembedding_penalty,
)
from lm_probes.rewards import RewardParams, answer_ids, get_reward_type, initial_head
from lm_probes.scoring import Encoded, head_is_linear, pad_id_of, score


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

    def check(self) -> None:
        """Refuse options that cannot apply (a ValueError naming the option)."""
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


class RewardModel(torch.nn.Module):
    """The LM plus, for types with a head, u; ``rewards(encs)`` gives r for each encoding."""

    def __init__(self, lm: LoadedLM, cfg: TrainConfig, runtime: Runtime | None = None):
        super().__init__()
        self.runtime = runtime or Runtime()  # (lm_probes.distributed: shards and gathers; one process)
        self.rt = get_reward_type(cfg.objective)
        self.lm, self.cfg, self.model = lm, cfg, lm.model
        self.pad = pad_id_of(lm.tokenizer)
        head_is_linear(self.model)  # (checked now by every process: its passes, once sharded, are collective)
        head_seed = cfg.seed if cfg.head_seed is None else cfg.head_seed
        head = initial_head(lm.info["hidden_size"], head_seed, lm.dtype).to(lm.device)
        self.u = torch.nn.Parameter(head) if self.rt.uses_head else None
        self.answer_ids = answer_ids(lm.tokenizer, self.rt.answers)
        freeze(self.model, cfg.freeze)
        self.w0 = None  # the output head's initial value, for the L2 pull
        if cfg.unembedding_l2:  # (a tied head stays tied: the pull then holds the input embedding too)
            self.w0 = self.model.get_output_embeddings().weight.detach().clone()
        self.ref: dict[tuple, float] = {}  # training encodings → ln π_ref
        self.ref_tokens: dict[tuple, torch.Tensor] = {}  # and its per-token terms (for token dropout)
        # evaluation encodings → ln π_ref and its per-token terms, computed in exactly the chunks
        # evaluate_sets() uses, so that before training every IM reward is exactly 0 (float32 rounding
        # depends on a batch's padding and composition)
        self.ref_eval: dict[tuple, float] = {}
        self.ref_eval_tokens: dict[tuple, np.ndarray] = {}

    @property
    def _no_split_modules(self) -> list[str]:
        """The LM's decoder-layer classes: the units a fully sharded back end wraps (accelerate's
        transformer auto-wrap policy reads this attribute, as it does on a transformers model)."""
        return list(getattr(self.model, "_no_split_modules", None) or ())

    def trainable(self) -> list[torch.Tensor]:
        """What the optimiser moves: the reward type's parameters less those frozen (``cfg.freeze``)."""
        return [p for p in self.rt.trainable(self.model, self.u) if p.requires_grad]

    @torch.no_grad()
    def fill_reference(self, encs: list[Encoded], batch: int = 32) -> None:
        """ln π_ref of the training encodings from the current (initial) weights, ``batch`` at a time,
        in order of length (less padding)."""
        if not self.rt.uses_reference:
            return
        encs = sorted(encs, key=lambda e: len(e.input_ids))
        ref, ref_tokens = {}, {}
        for i in self.runtime.shard(range(0, len(encs), batch)):
            chunk = encs[i : i + batch]
            with self.runtime.autocast():
                sc = score(self.model, chunk, self.pad)
            for e, lp, tok in zip(chunk, sc.logprob.tolist(), sc.token_logprob, strict=True):
                ref[e.input_ids] = lp
                if self.cfg.token_dropout:
                    ref_tokens[e.input_ids] = tok.detach().cpu()
        self.ref.update(self.runtime.merge(ref))
        self.ref_tokens.update(self.runtime.merge(ref_tokens))

    @torch.no_grad()
    def fill_eval_reference(self, ev: dict[str, list[tuple[Encoded, Encoded]]]) -> None:
        """ln π_ref (and its per-token terms) of every evaluation encoding, in exactly the chunks
        :func:`evaluate_sets` uses, so that before training every IM reward is exactly 0."""
        if not self.rt.uses_reference:
            return
        ref, ref_tokens = {}, {}
        for chunk in self.runtime.shard(eval_chunks(ev)):
            with self.runtime.autocast():
                sc = score(self.model, chunk, self.pad)
            for e, lp, tok in zip(chunk, sc.logprob.tolist(), sc.token_logprob, strict=True):
                ref[e.input_ids] = lp
                ref_tokens[e.input_ids] = tok.double().cpu().numpy()
        self.ref_eval.update(self.runtime.merge(ref))
        self.ref_eval_tokens.update(self.runtime.merge(ref_tokens))

    def rewards(
        self,
        encs: list[Encoded],
        table: dict | None = None,
        *,
        with_scored: bool = False,
        dropout: torch.Generator | None = None,
    ):
        """Rewards (N,) of ``encs`` (with ``with_scored``: and the Scored batch and the RewardParams used);
        ``table`` maps encodings to ln π_ref (default: the training table). With ``dropout`` (a seeded
        generator; training only) and ``cfg.token_dropout`` = p, each per-token term of the reward is
        dropped with probability p and the rest rescaled (mitigations.token_dropout_reward)."""
        ref = None
        if self.rt.uses_reference:
            table = self.ref if table is None else table
            ref = torch.tensor([table[e.input_ids] for e in encs], dtype=torch.float64, device=self.lm.device)
        params = RewardParams(self.cfg.beta, self.u, ref, self.answer_ids)
        # (a sharded back end: one pass per call, as many on every process)
        mode = "single" if self.runtime.lockstep else "auto"
        r, sc = self.rt.score_with(self.model, encs, self.pad, params, mode)
        p = self.cfg.token_dropout
        if dropout is not None and p:
            keep = token_keep_masks([e.response_len for e in encs], p, dropout)
            terms = [
                self.rt.token_rewards(
                    lp, self.ref_tokens[e.input_ids].to(lp) if self.rt.uses_reference else None, self.cfg.beta
                )
                for e, lp in zip(encs, sc.token_logprob, strict=True)
            ]
            r = torch.stack(
                [token_dropout_reward(t, k.to(t.device), p) for t, k in zip(terms, keep, strict=True)]
            )
        return (r, sc, params) if with_scored else r

    def pair_losses(self, encs: list[Encoded]) -> torch.Tensor:
        """The reward type's per-pair loss (N/2,) of training encodings (chosen, rejected) interleaved."""
        r, sc, params = self.rewards(encs, with_scored=True)
        return self.rt.pair_loss(r, sc, params)

    def batch_loss(
        self,
        pairs: list[tuple[Encoded, Encoded]],
        rewrites: list[tuple[Encoded, Encoded] | None] | None = None,
        dropout: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The training loss of a micro-batch, summed over its pairs: the reward type's per-pair loss,
        plus ``cfg.consistency`` × consistency_penalty for the pairs with a rewrite (``rewrites``, aligned
        with ``pairs``; their rewards are computed in the same pass). The L2 pull of the head is per
        optimiser step (:meth:`step_penalty`)."""
        encs = [e for pr in pairs for e in pr]
        with_rw = [i for i, w in enumerate(rewrites or []) if w is not None] if self.cfg.consistency else []
        encs += [e for i in with_rw for e in rewrites[i]]
        r, sc, params = self.rewards(encs, with_scored=True, dropout=dropout)
        q = self.rt.loss_values(r, sc, params)
        n = 2 * len(pairs)
        loss = self.rt.loss(q[0:n:2], q[1:n:2]).sum()
        if with_rw:
            orig = torch.stack([r[2 * i + j] for i in with_rw for j in (0, 1)])
            loss = loss + self.cfg.consistency * consistency_penalty(orig, r[n:]).sum()
        return loss

    def forward(self, pairs=None, rewrites=None, dropout=None, *, rewards_of=None, table=None):
        """What DDP / FSDP wrap. Training: a micro-batch's loss, :meth:`batch_loss` plus the head's L2
        pull counted once per pair (so that a full step carries it once per ``batch_size`` pairs).
        Evaluation (``rewards_of``: encodings): their (rewards, Scored, RewardParams) against the reference
        ``table``, through forward so that a fully sharded model gathers its parameters as it does in
        training (lm_probes.distributed)."""
        if rewards_of is not None:
            return self.rewards(rewards_of, table, with_scored=True)
        return self.batch_loss(pairs, rewrites, dropout) + self.step_penalty() * len(pairs)

    def step_penalty(self) -> torch.Tensor | float:
        """``cfg.unembedding_l2`` × ‖W − W₀‖² (0 without the pull)."""
        return (
            self.cfg.unembedding_l2 * unembedding_penalty(self.model, self.w0) if self.w0 is not None else 0.0
        )


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
    cfg.check()
    tune_malloc()  # (speed only: activations reallocated every step stay in the process)
    torch.manual_seed(cfg.seed)
    runtime = runtime or Runtime()
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
    t_ref = time.perf_counter()  # before any update: π_ref is the initial model
    rm.fill_reference([e for pr in [*tr, *(w for w in rewrites or [] if w)] for e in pr])
    reference_s = time.perf_counter() - t_ref
    rm.fill_eval_reference(ev)
    opt = torch.optim.Adam(rm.trainable(), lr=cfg.lr)
    # (one plain process: rm and opt themselves). A type that reads no logits leaves an untied head unused
    head = rm.model.get_output_embeddings().weight
    unused = (
        not rm.rt.needs_logits and head.requires_grad and head is not rm.model.get_input_embeddings().weight
    )
    if runtime.lockstep and cfg.unembedding_l2:
        raise ValueError("unembedding_l2 (the L2 pull of the head) is not supported under a sharded back end")
    wrapped, opt = runtime.prepare(rm, opt, find_unused=unused)
    history, start_epoch, pending_loss = [], 0, None
    ckpt = Path(checkpoint_dir) / "checkpoint.pt" if checkpoint_dir else None
    if resume and ckpt and ckpt.exists():  # (into the prepared model: a sharded one loads its shards)
        history, start_epoch, pending_loss = restore_checkpoint(ckpt, rm, opt)

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
