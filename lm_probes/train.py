"""Train an EX-RM or an IM-RM on a real LM, same data, loss and optimiser for both (THEORY.md §1, §5).

    rmgap train --train data.jsonl --eval test=test.jsonl --objective im_rm --epochs 2 --lr 1e-6
    python -m lm_probes.train --help

Objectives (all through lm_probes.scoring.score, the probes' scoring path):
    ex_rm         r = ⟨u, h_last⟩        linear head on the last response token's state
    ex_rm_mean    r = ⟨u, mean_k h_k⟩    head over the mean of the response's states (alternative)
    im_rm         r = β (ln π_θ(y|x) − ln π_ref(y|x)), reference log-probs computed once up front
    im_rm_no_ref  r = β ln π_θ(y|x)      (alternative)
Bradley–Terry loss, Adam, gradient accumulation (``batch_size`` pairs per step in micro-batches of
``micro_batch``), length-bucketed micro-batches, seeded, a checkpoint after every epoch (``--resume``).
Metrics per named evaluation set after every epoch, with TRL's names: loss, rewards/accuracies
(ties as ½, as the paper's code), rewards/accuracies_strict, rewards/tie_rate, rewards/chosen,
rewards/rejected, rewards/margins, rewards/normalized_abs_margin.
Outputs in --out: summary.json (final and per-epoch metrics, config, model info), rewards_<set>.jsonl
(per-example rewards), learning_curves.png.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from lm_probes.data import Pair, read_jsonl
from lm_probes.loading import LoadedLM
from lm_probes.scoring import Encoded, ScoringError, encode, pad_id_of, score
from theory import accuracy, bt_loss

OBJECTIVES = ("ex_rm", "im_rm", "ex_rm_mean", "im_rm_no_ref")
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
    chat_template: bool = True
    max_length: int | None = None  # default: the model's context
    progress: bool = True


def _bar(it, total, desc, enabled):
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, total=total, desc=desc, leave=False)


def initial_head(D: int, seed: int) -> torch.Tensor:
    """The EX-RM head's initial value, (D,) float32: N(0, 1/D) entries from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(D, generator=gen) / math.sqrt(D)


class RewardModel(torch.nn.Module):
    """The LM plus, for EX-RMs, a linear head u; ``rewards(encs)`` gives r for each encoding."""

    def __init__(self, lm: LoadedLM, cfg: TrainConfig):
        super().__init__()
        if cfg.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {cfg.objective!r}")
        self.lm, self.cfg, self.model = lm, cfg, lm.model
        self.pad = pad_id_of(lm.tokenizer)
        self.u = torch.nn.Parameter(initial_head(lm.info["hidden_size"], cfg.seed).to(lm.dtype))
        self.ref: dict[tuple, float] = {}  # training encodings → ln π_ref
        # per evaluation set, computed in exactly the batches evaluate() uses, so that before training
        # every IM reward is exactly 0 (float32 rounding depends on a batch's padding and composition)
        self.ref_by_set: dict[str, dict[tuple, float]] = {}

    @property
    def explicit(self) -> bool:
        return self.cfg.objective.startswith("ex_rm")

    def trainable(self):
        params = list(self.model.parameters())
        return [*params, self.u] if self.explicit else params

    @torch.no_grad()
    def fill_reference(self, encs: list[Encoded], batch: int = 32, table: dict | None = None) -> None:
        """ln π_ref from the current (initial) weights, in chunks of ``batch`` encodings in order."""
        if self.cfg.objective != "im_rm":
            return
        table = self.ref if table is None else table
        for i in range(0, len(encs), batch):
            chunk = encs[i : i + batch]
            for e, lp in zip(chunk, score(self.model, chunk, self.pad).logprob.tolist(), strict=True):
                table[e.input_ids] = lp

    def fill_eval_reference(self, name: str, pairs: list[tuple[Encoded, Encoded]]) -> None:
        """ln π_ref of an evaluation set, in exactly the chunks :func:`evaluate` uses (EVAL_BATCH pairs),
        so that before training every IM reward is exactly 0 (float32 rounding depends on a batch's
        padding and composition)."""
        encs = [e for pr in pairs for e in pr]
        self.fill_reference(encs, batch=2 * EVAL_BATCH, table=self.ref_by_set.setdefault(name, {}))

    def rewards(self, encs: list[Encoded], table: dict | None = None) -> torch.Tensor:
        sc = score(self.model, encs, self.pad, need_logits=not self.explicit)
        obj = self.cfg.objective
        if obj == "ex_rm":
            return sc.last_hidden @ self.u
        if obj == "ex_rm_mean":
            return sc.mean_hidden @ self.u
        if obj == "im_rm_no_ref":
            return self.cfg.beta * sc.logprob
        ref = torch.tensor(
            [(self.ref if table is None else table)[e.input_ids] for e in encs],
            dtype=sc.logprob.dtype,
            device=sc.logprob.device,
        )
        return self.cfg.beta * (sc.logprob - ref)


def encode_pairs(
    lm: LoadedLM, pairs: list[Pair], cfg: TrainConfig
) -> tuple[list[tuple[Encoded, Encoded]], list[Pair], list[str]]:
    """Encode (chosen, rejected) of each pair; returns (encodings, the pairs kept, reasons for those
    dropped). Pairs too long for the context are dropped and listed, never silently; other bad rows raise."""
    max_len = cfg.max_length or lm.info.get("max_positions")
    out, kept, dropped = [], [], []
    for p in pairs:
        try:
            c, r = (
                encode(
                    lm.tokenizer,
                    p.prompt,
                    resp,
                    chat_template=cfg.chat_template,
                    max_length=max_len,
                    where=f"{p.where} ({role})",
                )
                for role, resp in (("chosen", p.chosen), ("rejected", p.rejected))
            )
        except ScoringError as exc:
            if "exceeds the model's context" in str(exc):
                dropped.append(str(exc))
                continue
            raise
        out.append((c, r))
        kept.append(p)
    return out, kept, dropped


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


@torch.no_grad()
def evaluate(
    rm: RewardModel,
    pairs: list[tuple[Encoded, Encoded]],
    batch: int = 16,  # pairs; must equal EVAL_BATCH for exact ties before training
    name: str = "",
    epoch: int | None = None,
) -> tuple[dict, np.ndarray]:
    """Metrics of one evaluation set and its (N, 2) rewards (chosen, rejected)."""
    rw = []
    for i in range(0, len(pairs), batch):
        chunk = pairs[i : i + batch]
        enc = [e for pr in chunk for e in pr]
        rw.append(rm.rewards(enc, rm.ref_by_set.get(name)).double().cpu().numpy().reshape(-1, 2))
    r = np.concatenate(rw)
    if not np.all(np.isfinite(r)):
        bad = int(np.argwhere(~np.isfinite(r))[0][0])
        raise FloatingPointError(
            f"{rm.cfg.objective}: non-finite reward on evaluation set {name!r} at epoch {epoch} "
            f"(first at {pairs[bad][0].where}); the model's weights or outputs are NaN/inf"
        )
    acc = accuracy(r[:, 0], r[:, 1])
    metrics = {
        "loss": bt_loss(r[:, 0], r[:, 1]),
        "rewards/accuracies": acc.half_ties,
        "rewards/accuracies_strict": acc.strict,
        "rewards/tie_rate": acc.tie_rate,
        "rewards/chosen": float(r[:, 0].mean()),
        "rewards/rejected": float(r[:, 1].mean()),
        "rewards/margins": float((r[:, 0] - r[:, 1]).mean()),
        "rewards/normalized_abs_margin": acc.normalized_abs_margin,
        "n": acc.n,
    }
    return metrics, r


def train_reward_model(
    lm: LoadedLM,
    train: list[Pair],
    eval_sets: dict[str, list[Pair]],
    cfg: TrainConfig,
    out: Path | None = None,
    resume: bool = False,
) -> dict:
    """Train one reward model; evaluate every set after every epoch (and before training, epoch 0)."""
    if cfg.batch_size % cfg.micro_batch:
        raise ValueError(
            f"batch_size ({cfg.batch_size}) must be a multiple of micro_batch ({cfg.micro_batch})"
        )
    torch.manual_seed(cfg.seed)
    rm = RewardModel(lm, cfg)
    tr, _, dropped = encode_pairs(lm, train, cfg)
    if not tr:
        raise ValueError("no training pair fits the model's context")
    ev, ev_pairs = {}, {}
    for name, pairs in eval_sets.items():
        ev[name], ev_pairs[name], d = encode_pairs(lm, pairs, cfg)
        dropped += d
    # before any update: π_ref is the initial model (one pass over the training set, timed)
    t_ref = time.perf_counter()
    rm.fill_reference([e for pr in tr for e in pr])
    reference_s = time.perf_counter() - t_ref
    for name, pairs in ev.items():
        rm.fill_eval_reference(name, pairs)
    opt = torch.optim.Adam(rm.trainable(), lr=cfg.lr)
    history, start_epoch = [], 0
    ckpt = out / "checkpoint.pt" if out else None
    if resume and ckpt and ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        if state["config"] != asdict(cfg):
            raise ValueError(f"{ckpt} was written with a different configuration; refusing to resume")
        rm.model.load_state_dict(state["model"])
        rm.u.data.copy_(state["u"])
        opt.load_state_dict(state["optimizer"])
        rm.ref, rm.ref_by_set = state["ref"], state["ref_by_set"]
        history, start_epoch = state["history"], state["epoch"]
    if not history:
        history.append(
            {
                "epoch": 0,
                "train_loss": None,
                **{n: evaluate(rm, p, name=n, epoch=0)[0] for n, p in ev.items()},
            }
        )
    accum = cfg.batch_size // cfg.micro_batch
    t0, train_s = time.perf_counter(), 0.0
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        t_epoch = time.perf_counter()
        rm.model.train()
        batches = length_buckets(tr, cfg.micro_batch, np.random.default_rng([cfg.seed, epoch]))
        losses = []
        for step, b in enumerate(_bar(batches, len(batches), f"{cfg.objective} epoch {epoch}", cfg.progress)):
            encs = [e for i in b for e in tr[i]]
            r = rm.rewards(encs)
            loss = torch.nn.functional.softplus(r[1::2] - r[0::2]).sum() / cfg.batch_size
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
        history.append(
            {
                "epoch": epoch,
                "train_loss": float(np.mean(losses)),
                **{n: evaluate(rm, p, name=n, epoch=epoch)[0] for n, p in ev.items()},
            }
        )
        if ckpt:
            out.mkdir(parents=True, exist_ok=True)
            torch.save(
                {
                    "model": rm.model.state_dict(),
                    "u": rm.u.detach(),
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
        "model": lm.info,
        "final": {n: m for n, (m, _) in final.items()},
        "history": history,
        "n_train_pairs": len(tr),
        "dropped_too_long": dropped,
        "seconds": time.perf_counter() - t0,
        "train_seconds": train_s,  # optimiser epochs only
        "reference_seconds": reference_s,  # ln π_ref of the training set (im_rm; ~0 otherwise)
    }
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        for n, (_, r) in final.items():
            with open(out / f"rewards_{n.replace('/', '_')}.jsonl", "w") as f:
                for pair, rr in zip(ev_pairs[n], r, strict=True):
                    f.write(
                        json.dumps(
                            {
                                "where": pair.where,
                                "group": pair.group,
                                "chosen": pair.chosen,
                                "rejected": pair.rejected,
                                "reward_chosen": rr[0],
                                "reward_rejected": rr[1],
                            }
                        )
                        + "\n"
                    )
        plot_curves({cfg.objective: history}).savefig(
            out / "learning_curves.png", dpi=120, bbox_inches="tight"
        )
    return summary


def plot_curves(histories: dict[str, list[dict]]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = [k for k in next(iter(histories.values()))[0] if k not in ("epoch", "train_loss")]
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for j, (obj, hist) in enumerate(histories.items()):
        ep = [h["epoch"] for h in hist]
        for i, s in enumerate(sets):
            ax[0].plot(
                ep,
                [h[s]["rewards/accuracies"] for h in hist],
                marker="o",
                ms=3,
                color=f"C{i}",
                ls=["-", "--", ":", "-."][j % 4],
                label=f"{obj}: {s}",
            )
        ax[1].plot(
            ep[1:],
            [h["train_loss"] for h in hist[1:]],
            marker="o",
            ms=3,
            ls=["-", "--", ":", "-."][j % 4],
            color="k",
            label=obj,
        )
    ax[0].set(xlabel="epoch", ylabel="accuracy (ties = ½)", ylim=(-0.02, 1.02), title="evaluation sets")
    ax[0].legend(fontsize=7)
    ax[1].set(xlabel="epoch", ylabel="training BT loss", title="training loss")
    ax[1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def main(argv=None, lm=None) -> dict:
    ap = argparse.ArgumentParser(
        prog="rmgap train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--train", type=Path, required=True, help="JSONL with prompt/chosen/rejected")
    ap.add_argument(
        "--eval", action="append", default=[], metavar="NAME=FILE", help="an evaluation set (repeatable)"
    )
    ap.add_argument("--objective", choices=OBJECTIVES, default="im_rm")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"])
    ap.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    ap.add_argument("--lr", type=float, default=TrainConfig.lr)
    ap.add_argument("--beta", type=float, default=TrainConfig.beta)
    ap.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    ap.add_argument("--micro-batch", type=int, default=TrainConfig.micro_batch)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-chat-template", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("runs/train"))
    ap.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    eval_sets = {}
    for spec in args.eval:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            ap.error(f"--eval takes NAME=FILE, got {spec!r}")
        eval_sets[name] = read_jsonl(path, group=name)
    eval_sets = eval_sets or {}
    train = read_jsonl(args.train, group="train")
    if not eval_sets:
        eval_sets = {"train": train}
    cfg = replace(
        TrainConfig(),
        objective=args.objective,
        epochs=args.epochs,
        lr=args.lr,
        beta=args.beta,
        batch_size=args.batch_size,
        micro_batch=args.micro_batch,
        seed=args.seed,
        chat_template=not args.no_chat_template,
        progress=not args.quiet,
    )
    if lm is None:
        from lm_probes.loading import load_lm

        lm = load_lm(args.model, device=args.device, dtype=args.dtype)
    s = train_reward_model(lm, train, eval_sets, cfg, out=args.out, resume=args.resume)
    for name, m in s["final"].items():
        print(
            f"{name:>20}: accuracy {m['rewards/accuracies']:.3f} "
            f"(strict {m['rewards/accuracies_strict']:.3f}, ties {m['rewards/tie_rate']:.3f}), "
            f"loss {m['loss']:.4f}, margin {m['rewards/margins']:.4g}"
        )
    if s["dropped_too_long"]:
        print(f"dropped {len(s['dropped_too_long'])} pairs as too long, e.g. {s['dropped_too_long'][0]}")
    print(f"wrote {args.out}/summary.json")
    return s


if __name__ == "__main__":
    main()
