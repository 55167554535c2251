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

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from lm_probes.common import progress
from lm_probes.data import EncodedPairs, Pair, encode_pairs
from lm_probes.loading import LoadedLM
from lm_probes.rewards import RewardParams, answer_ids, get_reward_type, initial_head
from lm_probes.scoring import Encoded, pad_id_of, score
from theory import accuracy

EVAL_TOKENS = 16384  # padded tokens per evaluation chunk


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
        self.answer_ids = answer_ids(lm.tokenizer, self.rt.answers)
        self.ref: dict[tuple, float] = {}  # training encodings → ln π_ref
        # evaluation encodings → ln π_ref and its per-token terms, computed in exactly the chunks
        # evaluate_sets() uses, so that before training every IM reward is exactly 0 (float32 rounding
        # depends on a batch's padding and composition)
        self.ref_eval: dict[tuple, float] = {}
        self.ref_eval_tokens: dict[tuple, np.ndarray] = {}

    def trainable(self) -> list[torch.Tensor]:
        return self.rt.trainable(self.model, self.u)

    @torch.no_grad()
    def fill_reference(self, encs: list[Encoded], batch: int = 32) -> None:
        """ln π_ref of the training encodings from the current (initial) weights, ``batch`` at a time,
        in order of length (less padding)."""
        if not self.rt.uses_reference:
            return
        encs = sorted(encs, key=lambda e: len(e.input_ids))
        for i in range(0, len(encs), batch):
            chunk = encs[i : i + batch]
            for e, lp in zip(chunk, score(self.model, chunk, self.pad).logprob.tolist(), strict=True):
                self.ref[e.input_ids] = lp

    @torch.no_grad()
    def fill_eval_reference(self, ev: dict[str, list[tuple[Encoded, Encoded]]]) -> None:
        """ln π_ref (and its per-token terms) of every evaluation encoding, in exactly the chunks
        :func:`evaluate_sets` uses, so that before training every IM reward is exactly 0."""
        if not self.rt.uses_reference:
            return
        for chunk in eval_chunks(ev):
            sc = score(self.model, chunk, self.pad)
            for e, lp, tok in zip(chunk, sc.logprob.tolist(), sc.token_logprob, strict=True):
                self.ref_eval[e.input_ids] = lp
                self.ref_eval_tokens[e.input_ids] = tok.double().cpu().numpy()

    def rewards(self, encs: list[Encoded], table: dict | None = None, *, with_scored: bool = False):
        """Rewards (N,) of ``encs`` (with ``with_scored``: and the Scored batch and the RewardParams used);
        ``table`` maps encodings to ln π_ref (default: the training table)."""
        ref = None
        if self.rt.uses_reference:
            table = self.ref if table is None else table
            ref = torch.tensor([table[e.input_ids] for e in encs], dtype=torch.float64, device=self.lm.device)
        params = RewardParams(self.cfg.beta, self.u, ref, self.answer_ids)
        r, sc = self.rt.score_with(self.model, encs, self.pad, params)
        return (r, sc, params) if with_scored else r

    def pair_losses(self, encs: list[Encoded]) -> torch.Tensor:
        """The reward type's per-pair loss (N/2,) of training encodings (chosen, rejected) interleaved."""
        r, sc, params = self.rewards(encs, with_scored=True)
        return self.rt.pair_loss(r, sc, params)


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


def reward_metrics(rt, r: np.ndarray, q: np.ndarray | None = None) -> dict:
    """TRL-named metrics of (N, 2) rewards (chosen, rejected) under the reward type's own loss, which
    reads ``q`` (N, 2, ...) where the type has a ``loss_input`` and the rewards otherwise."""
    acc = accuracy(r[:, 0], r[:, 1])
    q = r if q is None else q
    qc, qr = torch.as_tensor(q[:, 0]), torch.as_tensor(q[:, 1])
    return {
        "loss": float(rt.loss(qc, qr).mean()),
        "rewards/accuracies": acc.half_ties,
        "rewards/accuracies_strict": acc.strict,
        "rewards/tie_rate": acc.tie_rate,
        "rewards/chosen": float(r[:, 0].mean()),
        "rewards/rejected": float(r[:, 1].mean()),
        "rewards/margins": float((r[:, 0] - r[:, 1]).mean()),
        "rewards/normalized_abs_margin": acc.normalized_abs_margin,
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
    rm: RewardModel, ev: dict[str, list[tuple[Encoded, Encoded]]], epoch: int | None = None, tokens=False
) -> dict[str, SetEval]:
    """Rewards and metrics of every evaluation set, scoring each distinct encoding once in the chunks of
    :func:`eval_chunks`; with ``tokens`` (and a reward type with ``token_rewards``) also the per-token
    terms of each reward."""
    values: dict[tuple, float] = {}
    toks: dict[tuple, np.ndarray] = {}
    qs: dict[tuple, np.ndarray] = {}  # what the loss reads, for types with a loss_input
    split = tokens and rm.rt.token_rewards is not None
    for chunk in eval_chunks(ev):
        r, sc, params = rm.rewards(chunk, rm.ref_eval, with_scored=True)
        if rm.rt.loss_input is not None:
            q = rm.rt.loss_values(r, sc, params).double().cpu().numpy()
            qs.update((e.input_ids, q[j]) for j, e in enumerate(chunk))
        for j, (e, v) in enumerate(zip(chunk, r.double().cpu().tolist(), strict=True)):
            values[e.input_ids] = v
            if split:
                ref = rm.ref_eval_tokens.get(e.input_ids)
                lp = sc.token_logprob[j].double().cpu().numpy()
                toks[e.input_ids] = rm.rt.token_rewards(lp, ref, rm.cfg.beta)
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


@dataclass
class TrainResult:
    summary: dict  # config, model, final and per-epoch metrics, counts, timings
    rewards: dict[str, np.ndarray] = field(default_factory=dict)  # set → (N, 2) final rewards
    token_rewards: dict[str, list] = field(default_factory=dict)  # set → per-pair per-token terms
    eval_pairs: dict[str, list[Pair]] = field(default_factory=dict)  # set → the pairs kept, in order


def _encode(lm: LoadedLM, pairs: list[Pair], cfg: TrainConfig) -> EncodedPairs:
    return encode_pairs(
        lm.tokenizer,
        pairs,
        chat_template=cfg.chat_template,
        max_length=cfg.max_length or lm.info.get("max_positions"),
        max_part_length=cfg.max_part_length,
        verbalize=get_reward_type(cfg.objective).verbalize,
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
    rm.fill_eval_reference(ev)
    opt = torch.optim.Adam(rm.trainable(), lr=cfg.lr)
    history, start_epoch, pending_loss = [], 0, None
    ckpt = Path(checkpoint_dir) / "checkpoint.pt" if checkpoint_dir else None
    if resume and ckpt and ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        if state["config"] != asdict(cfg):
            raise ValueError(f"{ckpt} was written with a different configuration; refusing to resume")
        rm.model.load_state_dict(state["model"])
        if rm.u is not None:
            rm.u.data.copy_(state["u"])
        opt.load_state_dict(state["optimizer"])
        rm.ref, rm.ref_eval, rm.ref_eval_tokens = state["ref"], state["ref_eval"], state["ref_eval_tokens"]
        history, start_epoch = state["history"], state["epoch"]
        if (ckpt.parent / "history.json").exists():  # the evaluations that followed the checkpoint
            saved = json.loads((ckpt.parent / "history.json").read_text())
            history = [h for h in saved if h["epoch"] <= start_epoch]
        if not history or history[-1]["epoch"] < start_epoch:  # stopped during that epoch's evaluation
            pending_loss = state.get("train_loss")

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
        desc = f"{cfg.objective} epoch {epoch}"
        losses = []
        for step, b in enumerate(progress(batches, desc, enabled=cfg.progress, total=len(batches))):
            loss = rm.pair_losses([e for i in b for e in tr[i]]).sum() / cfg.batch_size
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
        train_loss = float(np.mean(losses))
        if ckpt:  # before the evaluation, so that a run stopped there keeps its trained weights
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            torch.save(
                {
                    "model": rm.model.state_dict(),
                    "u": None if rm.u is None else rm.u.detach(),
                    "optimizer": opt.state_dict(),
                    "ref": rm.ref,
                    "ref_eval": rm.ref_eval,
                    "ref_eval_tokens": rm.ref_eval_tokens,
                    "history": history,
                    "epoch": epoch,
                    "train_loss": train_loss,
                    "config": asdict(cfg),
                },
                ckpt,
            )
        last = epoch == cfg.epochs
        res = log(epoch, train_loss, last or cfg.eval_every_epoch, last and cfg.token_rewards)
        final = res if last else None
        if ckpt:
            (ckpt.parent / "history.json").write_text(json.dumps(history))
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
    }
    rewards = {n: v.rewards for n, v in final.items()}
    tokens = {n: v.token_rewards for n, v in final.items() if v.token_rewards is not None}
    return TrainResult(summary, rewards, token_rewards=tokens, eval_pairs=ev_pairs)
