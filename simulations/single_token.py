"""Theorem 2 (theory/README.md §4): with single-token responses and fixed hidden states, an IM-RM cannot
generalise to unseen tokens at all, while an EX-RM generalises as far as the hidden states carry
meaning, following the max-margin separator u*.

    python simulations/single_token.py            # ≈ 15 s on 2 cores → figures/single_token.{png,json}
    python simulations/single_token.py --quick    # ≈ 2 s, used by the tests

The synthetic world (all states fixed, dimension D):
  * tokens have a meaning m_t ∈ {+1 (agree), −1 (disagree)}; training triples use agree tokens
    0..3 as y+ and disagree tokens 4..7 as y−; evaluation triples use tokens 8..15, never trained on;
    the other tokens of the vocabulary are fillers;
  * a prompt has a state h_x (the IM-RM predicts the response token from it: logits W h_x);
  * after reading y the state is h_{x,y} = h_x + signal·m_y·μ + e_y + noise·ξ_{x,y}, with μ a unit
    "meaning" direction, e_y a random token embedding (norm ≈ 1) and ξ fresh noise (the EX-RM reads it).

Models, all trained by full-batch gradient descent on the same triples and Bradley–Terry loss:
  * EX-RM r = ⟨u, h_{x,y}⟩, u from 0;
  * IM-RM r = β ln π_W(y|x)/π_{W0}(y|x) (reference = initial W0), computed as
    β[(W − W0)_y·h_x − (lse(W h_x) − lse(W0 h_x))] so that the partition terms cancel bitwise;
  * IM-RM without reference r = β ln π_W(y|x) (same training dynamics; evaluation keeps W0's ranking).
u* = max-margin separator of the training differences h_{x,y+} − h_{x,y−} (cvxpy, theory.max_margin).
The EX-RM over the mean of response hidden states (an alternative hypothesis) is the EX-RM itself
here, since a single-token response has one state; simulations/token_overlap.py compares it.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace

import numpy as np
from scipy.special import expit, logsumexp

from simulations._common import add_common_args, print_table, run_and_save
from theory import accuracy, max_margin_separator

NAME = "single_token"


@dataclass(frozen=True)
class Config:
    vocab: int = 64
    dim: int = 64
    n_train_tokens_per_side: int = 4
    n_eval_tokens_per_side: int = 4
    n_train: int = 48
    n_eval: int = 400
    signal: float = 0.5
    noise: float = 0.3
    token_scale: float = 2.0
    beta: float = 0.5
    lr_ex: float = 2.0
    lr_im: float = 8.0
    steps: int = 20_000
    n_checkpoints: int = 30
    sweep_signals: tuple = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5)
    sweep_seeds: int = 5
    sweep_steps: int = 5_000
    seed: int = 0


QUICK = dict(
    n_eval=200, steps=2_000, n_checkpoints=10, sweep_signals=(0.0, 0.5, 1.5), sweep_seeds=8, sweep_steps=1_000
)


@dataclass(frozen=True)
class World:
    """Fixed representations. Triples are index arrays (prompt, chosen token, rejected token)."""

    h_prompt: np.ndarray  # (n_prompts, D)
    h_resp: np.ndarray  # (n_prompts, V, D)  h_{x,y} for every prompt and token
    W0: np.ndarray  # (V, D) initial (= reference) unembedding
    train: tuple[np.ndarray, np.ndarray, np.ndarray]
    unseen: tuple[np.ndarray, np.ndarray, np.ndarray]


def make_world(cfg: Config, signal: float, rng: np.random.Generator) -> World:
    V, D, a, b = cfg.vocab, cfg.dim, cfg.n_train_tokens_per_side, cfg.n_eval_tokens_per_side
    if 2 * (a + b) > V:
        raise ValueError(f"vocab={V} is too small for {2 * (a + b)} meaningful tokens")
    meaning = np.zeros(V)
    meaning[:a], meaning[a : 2 * a] = 1, -1  # training agree / disagree tokens
    meaning[2 * a : 2 * a + b], meaning[2 * a + b : 2 * (a + b)] = 1, -1  # unseen agree / disagree
    mu = rng.standard_normal(D)
    mu /= np.linalg.norm(mu)
    emb = cfg.token_scale * rng.standard_normal((V, D)) / np.sqrt(D)
    n_prompts = cfg.n_train + cfg.n_eval
    h_prompt = rng.standard_normal((n_prompts, D)) / np.sqrt(D)
    xi = rng.standard_normal((n_prompts, V, D)) / np.sqrt(D)
    h_resp = h_prompt[:, None, :] + signal * meaning[None, :, None] * mu + emb[None] + cfg.noise * xi
    W0 = rng.standard_normal((V, D))
    tr_p = np.arange(cfg.n_train)
    ev_p = np.arange(cfg.n_train, n_prompts)
    train = (tr_p, rng.integers(0, a, cfg.n_train), rng.integers(a, 2 * a, cfg.n_train))
    unseen = (
        ev_p,
        rng.integers(2 * a, 2 * a + b, cfg.n_eval),
        rng.integers(2 * a + b, 2 * (a + b), cfg.n_eval),
    )
    return World(h_prompt, h_resp, W0, train, unseen)


def ex_rewards(world: World, u, triples):
    p, yp, ym = triples
    return world.h_resp[p, yp] @ u, world.h_resp[p, ym] @ u


def im_rewards(world: World, W, beta, triples, reference: bool = True):
    p, yp, ym = triples
    h = world.h_prompt[p]  # (N, D)
    if reference:
        dW = W - world.W0
        lse_shift = logsumexp(h @ W.T, axis=1) - logsumexp(h @ world.W0.T, axis=1)
        rp = beta * (np.einsum("nd,nd->n", dW[yp], h) - lse_shift)
        rm = beta * (np.einsum("nd,nd->n", dW[ym], h) - lse_shift)
    else:
        logp = (h @ W.T) - logsumexp(h @ W.T, axis=1, keepdims=True)
        rp, rm = beta * logp[np.arange(len(p)), yp], beta * logp[np.arange(len(p)), ym]
    return rp, rm


def train(world: World, cfg: Config, steps: int, checkpoints=()):
    """Full-batch GD on the BT loss for u (EX) and W (IM, same updates with or without reference).
    Yields (step, u, W) at each checkpoint and at the end."""
    p, yp, ym = world.train
    diff = world.h_resp[p, yp] - world.h_resp[p, ym]  # (N, D)
    h = world.h_prompt[p]
    n = len(p)
    sel = np.zeros((n, cfg.vocab))  # (N, V) signed selection e_{y+} − e_{y−}
    sel[np.arange(n), yp] += 1.0
    sel[np.arange(n), ym] -= 1.0
    u = np.zeros(cfg.dim)
    W = world.W0.copy()
    marks = set(checkpoints) | {steps}
    for t in range(1, steps + 1):
        g_ex = expit(-(diff @ u))  # σ(r− − r+)
        u += cfg.lr_ex * (g_ex @ diff) / n
        d_im = cfg.beta * np.einsum("nd,nd->n", sel @ W, h)  # r+ − r−: the partition terms cancel
        g_im = expit(-d_im) * (cfg.lr_im * cfg.beta / n)
        W += sel.T @ (g_im[:, None] * h)  # rows of tokens never trained on get exactly +0.0
        if t in marks:
            yield t, u.copy(), W.copy()


def cosine(a, b) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-300))


def run(cfg: Config) -> dict:
    rng = np.random.default_rng(cfg.seed)
    world = make_world(cfg, cfg.signal, rng)
    p, yp, ym = world.train
    sep = max_margin_separator(world.h_resp[p, yp] - world.h_resp[p, ym])
    up, um = ex_rewards(world, sep.u, world.unseen)
    predicted_unseen = float(np.mean(up - um > 0))
    checkpoints = np.unique(np.geomspace(1, cfg.steps, cfg.n_checkpoints).astype(int))
    curve = []
    for t, u, W in train(world, cfg, cfg.steps, checkpoints):
        ex_tr, ex_un = (
            accuracy(*ex_rewards(world, u, world.train)),
            accuracy(*ex_rewards(world, u, world.unseen)),
        )
        im_tr = accuracy(*im_rewards(world, W, cfg.beta, world.train))
        rp, rm = im_rewards(world, W, cfg.beta, world.unseen)
        im_un = accuracy(rp, rm)
        nr_un = accuracy(*im_rewards(world, W, cfg.beta, world.unseen, reference=False))
        curve.append(
            dict(
                step=int(t),
                ex_train=ex_tr.strict,
                ex_unseen=ex_un.strict,
                im_train=im_tr.strict,
                im_unseen_half_ties=im_un.half_ties,
                im_unseen_tie_rate=im_un.tie_rate,
                im_unseen_max_abs_gap=float(np.max(np.abs(rp - rm))),
                im_no_ref_unseen=nr_un.half_ties,
                cosine_to_max_margin=cosine(u, sep.u),
            )
        )
    last = curve[-1]
    # the geometric margin u reached on the training pairs: GD on the logistic loss converges in
    # direction to u*, so this approaches max_margin (a run that has barely moved keeps its first,
    # mean-difference direction, whose margin is smaller)
    achieved = float(np.min((world.h_resp[p, yp] - world.h_resp[p, ym]) @ u) / np.linalg.norm(u))
    # W after the last step: the rows of unseen tokens must be bitwise untouched
    a, b = cfg.n_train_tokens_per_side, cfg.n_eval_tokens_per_side
    unseen_rows = np.arange(2 * a, 2 * (a + b))
    rows_unchanged = bool(np.array_equal(W[unseen_rows], world.W0[unseen_rows]))
    sweep = run_sweep(cfg)
    return {
        "ex": dict(
            train_accuracy=last["ex_train"],
            unseen_accuracy=last["ex_unseen"],
            cosine_to_max_margin=last["cosine_to_max_margin"],
            max_margin_predicted_unseen_accuracy=predicted_unseen,
            max_margin=sep.margin,
            achieved_margin=achieved,
            n_support=len(sep.support),
        ),
        "im": dict(
            train_accuracy=last["im_train"],
            unseen_accuracy_half_ties=last["im_unseen_half_ties"],
            unseen_tie_rate=last["im_unseen_tie_rate"],
            unseen_max_abs_reward_gap=last["im_unseen_max_abs_gap"],
            unseen_token_rows_unchanged=rows_unchanged,
        ),
        "im_no_ref": dict(unseen_accuracy_half_ties=last["im_no_ref_unseen"]),
        "curve": curve,
        "sweep": sweep,
    }


def run_sweep(cfg: Config) -> list[dict]:
    """Unseen-token accuracy as hidden states carry more meaning (mean over ``sweep_seeds`` worlds)."""
    out = []
    for s in cfg.sweep_signals:
        ex, im, nr, mm = [], [], [], []
        for k in range(cfg.sweep_seeds):
            rng = np.random.default_rng([cfg.seed, 1 + k])
            world = make_world(cfg, s, rng)
            *_, (_, u, W) = train(world, cfg, cfg.sweep_steps)
            ex.append(accuracy(*ex_rewards(world, u, world.unseen)).strict)
            im.append(accuracy(*im_rewards(world, W, cfg.beta, world.unseen)).half_ties)
            nr.append(accuracy(*im_rewards(world, W, cfg.beta, world.unseen, reference=False)).half_ties)
            p, yp, ym = world.train
            u_star = max_margin_separator(world.h_resp[p, yp] - world.h_resp[p, ym]).u
            up, um = ex_rewards(world, u_star, world.unseen)
            mm.append(float(np.mean(up - um > 0)))
        out.append(
            dict(
                signal=float(s),
                ex_unseen_accuracy=float(np.mean(ex)),
                im_unseen_accuracy_half_ties=float(np.mean(im)),
                im_no_ref_unseen_accuracy_half_ties=float(np.mean(nr)),
                max_margin_predicted_unseen_accuracy=float(np.mean(mm)),
            )
        )
    return out


def plot(summary: dict, cfg: Config):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = summary["curve"]
    steps = [r["step"] for r in c]
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
    ax[0].plot(steps, [r["ex_train"] for r in c], "C0--", label="EX-RM train")
    ax[0].plot(steps, [r["ex_unseen"] for r in c], "C0-", lw=2, label="EX-RM unseen tokens")
    ax[0].plot(steps, [r["im_train"] for r in c], "C3--", label="IM-RM train")
    ax[0].plot(steps, [r["im_unseen_half_ties"] for r in c], "C3-", lw=2, label="IM-RM unseen (ties = ½)")
    ax[0].plot(steps, [r["im_no_ref_unseen"] for r in c], "C2:", label="IM-RM no ref, unseen")
    ax[0].axhline(
        summary["ex"]["max_margin_predicted_unseen_accuracy"],
        color="k",
        lw=0.8,
        ls="-.",
        label="u* predicts (unseen)",
    )
    ax[0].set(
        xscale="log",
        xlabel="GD step",
        ylabel="accuracy",
        ylim=(-0.02, 1.02),
        title=f"single-token responses (signal {cfg.signal})",
    )
    ax[0].legend(fontsize=7, loc="lower right")
    ax[1].plot(steps, [r["cosine_to_max_margin"] for r in c], "C0-")
    ax[1].set(xscale="log", xlabel="GD step", ylabel="cos(u_t, u*)", title="EX-RM direction → max-margin u*")
    sw = summary["sweep"]
    s = [r["signal"] for r in sw]
    ax[2].plot(s, [r["ex_unseen_accuracy"] for r in sw], "C0o-", label="EX-RM")
    ax[2].plot(s, [r["max_margin_predicted_unseen_accuracy"] for r in sw], "k.:", label="u* predicts")
    ax[2].plot(s, [r["im_unseen_accuracy_half_ties"] for r in sw], "C3s-", label="IM-RM (ties = ½)")
    ax[2].plot(s, [r["im_no_ref_unseen_accuracy_half_ties"] for r in sw], "C2^:", label="IM-RM no ref")
    ax[2].set(
        xlabel="meaning signal in hidden states",
        ylabel="unseen-token accuracy",
        ylim=(-0.02, 1.02),
        title=f"sweep (mean of {cfg.sweep_seeds} worlds)",
    )
    ax[2].legend(fontsize=8)
    fig.tight_layout()
    return fig


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap)
    ap.add_argument("--signal", type=float, default=Config.signal, help="meaning signal in hidden states")
    ap.add_argument("--steps", type=int, default=None, help="GD steps of the main run")
    args = ap.parse_args(argv)
    cfg = Config(seed=args.seed, signal=args.signal)
    if args.quick:
        cfg = replace(cfg, **QUICK)
    if args.steps:
        cfg = replace(cfg, steps=args.steps)
    summary = run_and_save(NAME, cfg, run, plot, args)
    ex, im = summary["ex"], summary["im"]
    print_table(
        [
            ("EX-RM", ex["train_accuracy"], ex["unseen_accuracy"], "-", "-"),
            (
                "IM-RM",
                im["train_accuracy"],
                im["unseen_accuracy_half_ties"],
                im["unseen_tie_rate"],
                im["unseen_max_abs_reward_gap"],
            ),
            ("IM-RM no ref", "-", summary["im_no_ref"]["unseen_accuracy_half_ties"], "-", "-"),
        ],
        ("model", "train acc", "unseen acc (ties ½)", "unseen tie rate", "max |Δr| unseen"),
    )
    print(
        f"\ncos(u_T, u*) = {ex['cosine_to_max_margin']:.4f}; u* predicts unseen accuracy "
        f"{ex['max_margin_predicted_unseen_accuracy']:.3f}; unseen-token rows of W untouched: "
        f"{im['unseen_token_rows_unchanged']}"
    )
    print(
        "sweep (signal: EX unseen / IM unseen ½-ties): "
        + ", ".join(
            f"{r['signal']:g}: {r['ex_unseen_accuracy']:.2f}/{r['im_unseen_accuracy_half_ties']:.2f}"
            for r in summary["sweep"]
        )
    )
    print(f"[{summary['seconds']:.1f} s] wrote {args.out_dir / (NAME + '.json')}")
    return summary


if __name__ == "__main__":
    main()
