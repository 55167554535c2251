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
rewards/chosen, rewards/rejected, rewards/margins, rewards/normalized_abs_margin.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from lm_probes.common import progress
from lm_probes.data import EncodedPairs, Pair, encode_pairs
from lm_probes.loading import LoadedLM
from lm_probes.rewards import RewardParams, get_reward_type, initial_head
from lm_probes.scoring import Encoded, pad_id_of, score
from theory import accuracy

EVAL_BATCH = 16  # pairs per evaluation chunk


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
    progress: bool = True


class RewardModel(torch.nn.Module):
    """The LM plus, for types with a head, u; ``rewards(encs)`` gives r for each encoding."""

    def __init__(self, lm: LoadedLM, cfg: TrainConfig):
        super().__init__()
        self.rt = get_reward_type(cfg.objective)
        self.lm, self.cfg, self.model = lm, cfg, lm.model
        self.pad = pad_id_of(lm.tokenizer)
        head_seed = cfg.seed if cfg.head_seed is None else cfg.head_seed
        head = initial_head(lm.info["hidden_size"], head_seed, lm.dtype).to(lm.device)
        self.u = torch.nn.Parameter(head) if self.rt.uses_head else None
        self.ref: dict[tuple, float] = {}  # training encodings → ln π_ref
        # per evaluation set, computed in exactly the batches evaluate() uses, so that before training
        # every IM reward is exactly 0 (float32 rounding depends on a batch's padding and composition)
        self.ref_by_set: dict[str, dict[tuple, float]] = {}

    def trainable(self) -> list[torch.Tensor]:
        return self.rt.trainable(self.model, self.u)

    @torch.no_grad()
    def fill_reference(self, encs: list[Encoded], batch: int = 32, table: dict | None = None) -> None:
        """ln π_ref from the current (initial) weights, in chunks of ``batch`` encodings in order."""
        if not self.rt.uses_reference:
            return
        table = self.ref if table is None else table
        for i in range(0, len(encs), batch):
            chunk = encs[i : i + batch]
            for e, lp in zip(chunk, score(self.model, chunk, self.pad).logprob.tolist(), strict=True):
                table[e.input_ids] = lp

    def fill_eval_reference(self, name: str, pairs: list[tuple[Encoded, Encoded]]) -> None:
        """ln π_ref of an evaluation set, in exactly the chunks :func:`evaluate` uses (EVAL_BATCH pairs),
        so that before training every IM reward is exactly 0."""
        encs = [e for pr in pairs for e in pr]
        self.fill_reference(encs, batch=2 * EVAL_BATCH, table=self.ref_by_set.setdefault(name, {}))

    def rewards(self, encs: list[Encoded], table: dict | None = None) -> torch.Tensor:
        ref = None
        if self.rt.uses_reference:
            table = self.ref if table is None else table
            ref = torch.tensor([table[e.input_ids] for e in encs], dtype=torch.float64, device=self.lm.device)
        return self.rt.score(self.model, encs, self.pad, RewardParams(self.cfg.beta, self.u, ref))


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


def reward_metrics(rt, r: np.ndarray) -> dict:
    """TRL-named metrics of (N, 2) rewards (chosen, rejected) under the reward type's own loss."""
    acc = accuracy(r[:, 0], r[:, 1])
    rc, rr = torch.as_tensor(r[:, 0]), torch.as_tensor(r[:, 1])
    return {
        "loss": float(rt.loss(rc, rr).mean()),
        "rewards/accuracies": acc.half_ties,
        "rewards/accuracies_strict": acc.strict,
        "rewards/tie_rate": acc.tie_rate,
        "rewards/chosen": float(r[:, 0].mean()),
        "rewards/rejected": float(r[:, 1].mean()),
        "rewards/margins": float((r[:, 0] - r[:, 1]).mean()),
        "rewards/normalized_abs_margin": acc.normalized_abs_margin,
        "n": acc.n,
    }


@torch.no_grad()
def evaluate(
    rm: RewardModel, pairs: list[tuple[Encoded, Encoded]], name: str = "", epoch: int | None = None
) -> tuple[dict, np.ndarray]:
    """Metrics of one evaluation set and its (N, 2) rewards (chosen, rejected), in EVAL_BATCH chunks."""
    rw = []
    for i in range(0, len(pairs), EVAL_BATCH):
        enc = [e for pr in pairs[i : i + EVAL_BATCH] for e in pr]
        rw.append(rm.rewards(enc, rm.ref_by_set.get(name)).double().cpu().numpy().reshape(-1, 2))
    r = np.concatenate(rw)
    if not np.all(np.isfinite(r)):
        bad = int(np.argwhere(~np.isfinite(r))[0][0])
        raise FloatingPointError(
            f"{rm.cfg.objective}: non-finite reward on evaluation set {name!r} at epoch {epoch} "
            f"(first at {pairs[bad][0].where}); the model's weights or outputs are NaN/inf"
        )
    return reward_metrics(rm.rt, r), r


@dataclass
class TrainResult:
    summary: dict  # config, model, final and per-epoch metrics, counts, timings
    rewards: dict[str, np.ndarray] = field(default_factory=dict)  # set → (N, 2) final rewards
    eval_pairs: dict[str, list[Pair]] = field(default_factory=dict)  # set → the pairs kept, in order


def _encode(lm: LoadedLM, pairs: list[Pair], cfg: TrainConfig) -> EncodedPairs:
    return encode_pairs(
        lm.tokenizer,
        pairs,
        chat_template=cfg.chat_template,
        max_length=cfg.max_length or lm.info.get("max_positions"),
    )


def train_reward_model(
    lm: LoadedLM,
    train: list[Pair],
    eval_sets: dict[str, list[Pair]],
    cfg: TrainConfig,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train one reward model; evaluate every set after every epoch (and before training, epoch 0).
    Pairs too long for the context or with identical responses are left out and listed in
    ``summary["dropped"]``."""
    if cfg.batch_size % cfg.micro_batch:
        raise ValueError(
            f"batch_size ({cfg.batch_size}) must be a multiple of micro_batch ({cfg.micro_batch})"
        )
    torch.manual_seed(cfg.seed)
    rm = RewardModel(lm, cfg)
    enc_train = _encode(lm, train, cfg)
    tr, dropped = enc_train.encodings, {"train": enc_train.dropped}
    if not tr:
        raise ValueError(f"no usable training pair: {enc_train.n_dropped()} dropped {enc_train.dropped}")
    ev, ev_pairs = {}, {}
    for name, pairs in eval_sets.items():
        e = _encode(lm, pairs, cfg)
        ev[name], ev_pairs[name], dropped[name] = e.encodings, e.kept, e.dropped
        if not e.encodings:
            raise ValueError(f"evaluation set {name!r}: every pair was dropped {e.dropped}")
    t_ref = time.perf_counter()  # before any update: π_ref is the initial model
    rm.fill_reference([e for pr in tr for e in pr])
    reference_s = time.perf_counter() - t_ref
    for name, pairs in ev.items():
        rm.fill_eval_reference(name, pairs)
    opt = torch.optim.Adam(rm.trainable(), lr=cfg.lr)
    history, start_epoch = [], 0
    ckpt = Path(checkpoint_dir) / "checkpoint.pt" if checkpoint_dir else None
    if resume and ckpt and ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        if state["config"] != asdict(cfg):
            raise ValueError(f"{ckpt} was written with a different configuration; refusing to resume")
        rm.model.load_state_dict(state["model"])
        if rm.u is not None:
            rm.u.data.copy_(state["u"])
        opt.load_state_dict(state["optimizer"])
        rm.ref, rm.ref_by_set = state["ref"], state["ref_by_set"]
        history, start_epoch = state["history"], state["epoch"]

    def log(epoch, train_loss):
        metrics = {n: evaluate(rm, p, name=n, epoch=epoch)[0] for n, p in ev.items()}
        history.append({"epoch": epoch, "train_loss": train_loss, **metrics})

    if not history:
        log(0, None)
    accum = cfg.batch_size // cfg.micro_batch
    t0, train_s = time.perf_counter(), 0.0
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        t_epoch = time.perf_counter()
        rm.model.train()
        batches = length_buckets(tr, cfg.micro_batch, np.random.default_rng([cfg.seed, epoch]))
        desc = f"{cfg.objective} epoch {epoch}"
        losses = []
        for step, b in enumerate(progress(batches, desc, enabled=cfg.progress, total=len(batches))):
            r = rm.rewards([e for i in b for e in tr[i]])
            loss = rm.rt.loss(r[0::2], r[1::2]).sum() / cfg.batch_size
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"{cfg.objective}: loss is {loss.item()} at epoch {epoch}, micro-batch {step} "
                    f"(pairs {[tr[i][0].where for i in b][:3]}…); lower --lr or check the data"
                )
            loss.backward()
            losses.append(loss.item() * cfg.batch_size / len(b))
            if (step + 1) % accum == 0 or step + 1 == len(batches):
                opt.step()
                opt.zero_grad(set_to_none=True)
        train_s += time.perf_counter() - t_epoch
        rm.model.eval()
        log(epoch, float(np.mean(losses)))
        if ckpt:
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            torch.save(
                {
                    "model": rm.model.state_dict(),
                    "u": None if rm.u is None else rm.u.detach(),
                    "optimizer": opt.state_dict(),
                    "ref": rm.ref,
                    "ref_by_set": rm.ref_by_set,
                    "history": history,
                    "epoch": epoch,
                    "config": asdict(cfg),
                },
                ckpt,
            )
    final = {n: evaluate(rm, p, name=n, epoch=cfg.epochs) for n, p in ev.items()}
    summary = {
        "config": asdict(cfg),
        "reward_type": rm.rt.summary,
        "model": lm.info,
        "final": {n: m for n, (m, _) in final.items()},
        "history": history,
        "n_train_pairs": len(tr),
        "dropped": dropped,
        "seconds": time.perf_counter() - t0,
        "train_seconds": train_s,  # optimiser epochs only
        "reference_seconds": reference_s,  # ln π_ref of the training set (~0 without a reference)
    }
    return TrainResult(summary, {n: r for n, (_, r) in final.items()}, ev_pairs)
