"""Theorem 2 under the optimisers trainers use (theory/README.md §4, "Under Adam"): does the IM-RM's exact
tie on unseen tokens survive momentum, Adam, AdamW and Adam with an L2 penalty, and where does each
optimiser take the EX-RM's head?

    python simulations/optimizers.py            # ≈ 2 s on 2 cores → figures/optimizers.{png,json}
    python simulations/optimizers.py --quick    # < 1 s, used by the tests

The world is single_token.py's (fixed states, single-token responses, unseen evaluation tokens). The
IM-RM's loss gradient on the row of a token that no training pair contains is exactly 0.0: the
softmax terms of y+ and y− cancel because both share the prompt. Hence:
  * gd, momentum, adam (and any optimiser whose update of a coordinate is 0 while its gradients have
    all been 0): the rows of unseen tokens stay bitwise W0's, every unseen triple ties;
  * adamw (decoupled weight decay λ): every row shrinks, W_t − W0_t = c·W0_t with c = (1 − ηλ)^T − 1 < 0
    on unseen rows, so r(ȳ+) − r(ȳ−) = β·c·⟨W0_{ȳ+} − W0_{ȳ−}, h_x̄⟩: the ties break, and the unseen
    ranking is exactly the reverse of the reference's (``reverse_of_reference`` checks it pair by pair);
  * adam_l2 (λW added to the gradient, i.e. (λ/2)‖W‖² in the loss): the penalty's gradient reaches
    the unseen rows, Adam normalises it to steps of size ≈ η, and the ties break too (no ranking is
    predicted: it is measured).
The EX-RM's head u (from 0) is trained by the same optimiser; its direction is compared with the ℓ2
max-margin separator u* (theory.max_margin) that gradient descent converges to.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, replace

import numpy as np
from scipy.special import expit

from simulations._common import add_common_args, print_table, run_and_save
from simulations.single_token import Config as WorldConfig
from simulations.single_token import cosine, ex_rewards, im_rewards, make_world
from theory import accuracy, max_margin_separator

NAME = "optimizers"
OPTIMIZERS = ("gd", "momentum", "adam", "adamw", "adam_l2")


@dataclass(frozen=True)
class Config:
    world: WorldConfig = field(default_factory=WorldConfig)
    steps: int = 3_000
    lr_gd_ex: float = 2.0  # single_token.py's rates for the (full-batch) gradient methods
    lr_gd_im: float = 8.0
    lr_adam: float = 0.01  # Adam's step per coordinate is ≈ lr whatever the gradient's scale
    momentum: float = 0.9
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.01
    seed: int = 0


QUICK = dict(steps=400)


class Optimiser:
    """One of OPTIMIZERS on one numpy parameter, updated in place by ``step(param, grad)``; Adam's
    update is torch.optim.Adam's (bias-corrected), AdamW's decay is decoupled (θ ← θ − ηλθ first)."""

    def __init__(self, kind: str, lr: float, cfg: Config, shape):
        self.kind, self.lr, self.cfg, self.t = kind, lr, cfg, 0
        self.m, self.v = np.zeros(shape), np.zeros(shape)

    def step(self, param: np.ndarray, grad: np.ndarray) -> None:
        c, self.t = self.cfg, self.t + 1
        if self.kind == "gd":
            param -= self.lr * grad
            return
        if self.kind == "momentum":
            self.m = c.momentum * self.m + grad
            param -= self.lr * self.m
            return
        if self.kind == "adam_l2":
            grad = grad + c.weight_decay * param
        if self.kind == "adamw":
            param -= self.lr * c.weight_decay * param
        b1, b2 = c.betas
        self.m = b1 * self.m + (1 - b1) * grad
        self.v = b2 * self.v + (1 - b2) * grad**2
        m_hat, v_hat = self.m / (1 - b1**self.t), self.v / (1 - b2**self.t)
        param -= self.lr * m_hat / (np.sqrt(v_hat) + c.eps)


def train_with(world, cfg: Config, kind: str):
    """Full-batch training of u (EX, from 0) and W (IM, from W0) by ``kind`` → (u, W)."""
    wc = cfg.world
    p, yp, ym = world.train
    diff, h, n = world.h_resp[p, yp] - world.h_resp[p, ym], world.h_prompt[p], len(p)
    sel = np.zeros((n, wc.vocab))
    sel[np.arange(n), yp] += 1.0
    sel[np.arange(n), ym] -= 1.0
    u, W = np.zeros(wc.dim), world.W0.copy()
    gd = kind in ("gd", "momentum")
    opt_u = Optimiser(kind, cfg.lr_gd_ex if gd else cfg.lr_adam, cfg, u.shape)
    opt_w = Optimiser(kind, cfg.lr_gd_im if gd else cfg.lr_adam, cfg, W.shape)
    for _ in range(cfg.steps):
        opt_u.step(u, -(expit(-(diff @ u)) @ diff) / n)
        d_im = wc.beta * np.einsum("nd,nd->n", sel @ W, h)  # r+ − r−: the partition terms cancel
        opt_w.step(W, -sel.T @ ((expit(-d_im) * wc.beta / n)[:, None] * h))  # unseen rows: 0.0
    return u, W


def run(cfg: Config) -> dict:
    wc = cfg.world
    world = make_world(wc, wc.signal, np.random.default_rng(cfg.seed))
    p, yp, ym = world.train
    u_star = max_margin_separator(world.h_resp[p, yp] - world.h_resp[p, ym]).u
    a, b = wc.n_train_tokens_per_side, wc.n_eval_tokens_per_side
    unseen_rows = np.arange(2 * a, 2 * (a + b))
    ref = im_rewards(world, world.W0, wc.beta, world.unseen, reference=False)  # π_ref's own ranking
    ref_sign = np.sign(ref[0] - ref[1])
    out = {}
    for kind in OPTIMIZERS:
        u, W = train_with(world, cfg, kind)
        rp, rm = im_rewards(world, W, wc.beta, world.unseen)
        im_un, im_tr = accuracy(rp, rm), accuracy(*im_rewards(world, W, wc.beta, world.train))
        out[kind] = dict(
            im_train_accuracy=im_tr.strict,
            im_unseen_tie_rate=im_un.tie_rate,
            im_unseen_accuracy_half_ties=im_un.half_ties,
            im_unseen_max_abs_reward_gap=float(np.max(np.abs(rp - rm))),
            im_unseen_rows_unchanged=bool(np.array_equal(W[unseen_rows], world.W0[unseen_rows])),
            # the fraction of unseen pairs ranked the opposite way to π_ref (ties excluded: 0 if all tie)
            reverse_of_reference=float(np.mean(np.sign(rp - rm) == -ref_sign)),
            ex_train_accuracy=accuracy(*ex_rewards(world, u, world.train)).strict,
            ex_unseen_accuracy=accuracy(*ex_rewards(world, u, world.unseen)).strict,
            ex_cosine_to_l2_max_margin=cosine(u, u_star),
        )
    return {"by_optimizer": out}


def plot(summary: dict, cfg: Config):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summary["by_optimizer"]
    x = np.arange(len(OPTIMIZERS))
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    ax[0].bar(x - 0.2, [s[k]["im_unseen_tie_rate"] for k in OPTIMIZERS], 0.4, color="C3", label="tie rate")
    ax[0].bar(
        x + 0.2, [s[k]["reverse_of_reference"] for k in OPTIMIZERS], 0.4, color="C1", label="reverses π_ref"
    )
    ax[0].set(xticks=x, xticklabels=OPTIMIZERS, ylim=(0, 1.05), title="IM-RM on unseen tokens")
    ax[0].legend(fontsize=8)
    ax[1].bar(
        x - 0.2, [s[k]["ex_unseen_accuracy"] for k in OPTIMIZERS], 0.4, color="C0", label="unseen accuracy"
    )
    ax[1].bar(
        x + 0.2, [s[k]["ex_cosine_to_l2_max_margin"] for k in OPTIMIZERS], 0.4, color="C2", label="cos(u, u*)"
    )
    ax[1].set(xticks=x, xticklabels=OPTIMIZERS, ylim=(0, 1.05), title="EX-RM")
    ax[1].legend(fontsize=8)
    fig.suptitle(f"Theorem 2 under other optimisers ({cfg.steps} full-batch steps)")
    fig.tight_layout()
    return fig


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap)
    args = ap.parse_args(argv)
    cfg = Config(seed=args.seed)
    if args.quick:
        cfg = replace(cfg, **QUICK)
    summary = run_and_save(NAME, cfg, run, plot, args)
    rows = [
        (
            k,
            v["im_unseen_tie_rate"],
            v["im_unseen_accuracy_half_ties"],
            v["reverse_of_reference"],
            str(v["im_unseen_rows_unchanged"]),
            v["ex_unseen_accuracy"],
            v["ex_cosine_to_l2_max_margin"],
        )
        for k, v in summary["by_optimizer"].items()
    ]
    print_table(
        rows,
        (
            "optimiser",
            "IM tie rate",
            "IM acc (ties ½)",
            "IM reverses π_ref",
            "rows = W0",
            "EX unseen",
            "cos(u, u*)",
        ),
    )
    return summary


if __name__ == "__main__":
    main()
