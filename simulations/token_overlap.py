"""Learning dynamics (theory/README.md §3): one preference step moves an IM-RM's rewards by token overlap,
an EX-RM's by hidden-state similarity. Predictions of theory.dynamics vs the actual step.

    python simulations/token_overlap.py            # ≈ 10 s → figures/token_overlap.{png,json}
    python simulations/token_overlap.py --quick    # ≈ 2 s, used by the tests

A synthetic fixed-representation LM (nothing but W or u is trained):
  * tokens come in concepts of ``synonyms`` tokens each; a token's embedding is its concept's unit
    vector plus ``tau`` × a token-specific vector, E[t] = m_c(t) + τ e_t;
  * the head is a copy of the embeddings (W0 = κ E, untied from them), so the LM spreads probability
    over a concept's synonyms; the reference model of the IM-RM is W0;
  * states: s_0 = h_x (prompt), s_k = ρ s_{k−1} + (1 − ρ) E[y_k]; the state predicting y_k is
    h̃_k = s_{k−1} + m_c(y_k) (the context plus the meaning the LM is about to express);
    the EX-RM reads the last state s_L; the EX-RM-over-mean alternative reads mean(s_1..s_L).

One GD step (rate η, from r ≡ 0, so g = ½) on a training triple (x, y+, y−); then Δr(x̄, ȳ) on a new
prompt for responses ȳ made from y+ (and y−) by keeping a fraction of its tokens and replacing the
rest either by **unrelated** tokens (other concepts) or by **synonyms** (paraphrase: same meaning,
different tokens). Reported: predicted (theory.dynamics) vs observed change, for IM-RM, EX-RM and
EX-RM over mean; the relative error of the IM prediction at several η (O(η)); Δr against token
overlap for both groups; and for full paraphrases, Δr against the synonyms' closeness τ.
The IM-RM without reference has the same gradient (π_ref does not depend on θ), hence the same Δr.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy.special import log_softmax
from scipy.stats import pearsonr

from simulations._common import add_common_args, bradley_terry, print_table, run_and_save
from theory import TokenStates, ex_reward_change, im_reward_change

NAME = "token_overlap"


@dataclass(frozen=True)
class Config:
    n_concepts: int = 32
    synonyms: int = 4
    dim: int = 48
    resp_len: int = 8
    tau: float = 0.6
    kappa: float = 4.0
    decay: float = 0.5
    beta: float = 0.1
    lr: float = 1e-3
    lr_grid: tuple = (1e-1, 1e-2, 1e-3)
    overlap_levels: int = 9  # kept tokens 0..resp_len
    draws: int = 12  # responses per (group, level, source)
    tau_sweep: tuple = (0.1, 0.3, 0.6, 1.0, 1.5, 2.5)
    seed: int = 0


QUICK = dict(draws=4, tau_sweep=(0.3, 1.0, 2.5), lr_grid=(1e-2, 1e-3))


@dataclass(frozen=True)
class World:
    E: np.ndarray  # (V, D) token embeddings
    concept_of: np.ndarray  # (V,)
    M: np.ndarray  # (C, D) concept vectors
    W0: np.ndarray  # (V, D) head = reference
    h_train: np.ndarray  # (D,) prompt state of the training prompt
    h_eval: np.ndarray  # (D,) prompt state of the evaluation prompt


def make_world(cfg: Config, tau: float, rng: np.random.Generator) -> World:
    C, S, D = cfg.n_concepts, cfg.synonyms, cfg.dim
    M = rng.standard_normal((C, D))
    M /= np.linalg.norm(M, axis=1, keepdims=True)
    concept_of = np.repeat(np.arange(C), S)
    E = M[concept_of] + tau * rng.standard_normal((C * S, D)) / np.sqrt(D)
    h = rng.standard_normal((2, D)) / np.sqrt(D)
    return World(E, concept_of, M, cfg.kappa * E, h[0], h[1])


def seq_states(world: World, cfg: Config, h_prompt, tokens):
    """(predicting states (L, D), last state (D,), mean of states after each token (D,))."""
    s = h_prompt
    pred, after = [], []
    for t in tokens:
        pred.append(s + world.M[world.concept_of[t]])
        s = cfg.decay * s + (1 - cfg.decay) * world.E[t]
        after.append(s)
    return np.array(pred), s, np.mean(after, axis=0)


def token_states(world, cfg, h_prompt, tokens, W) -> TokenStates:
    pred, _, _ = seq_states(world, cfg, h_prompt, tokens)
    return TokenStates(np.asarray(tokens), pred, pred @ W.T)


def im_reward(world, cfg, W, h_prompt, tokens) -> float:
    pred, _, _ = seq_states(world, cfg, h_prompt, tokens)
    idx = np.arange(len(tokens)), np.asarray(tokens)
    return cfg.beta * float(
        log_softmax(pred @ W.T, axis=1)[idx].sum() - log_softmax(pred @ world.W0.T, axis=1)[idx].sum()
    )


def im_gradient(world, cfg, h_prompt, tokens, W) -> np.ndarray:
    """∇_W r_IM = β Σ_k (e_{y_k} − softmax(W h̃_k)) h̃_kᵀ  (V, D)."""
    pred, _, _ = seq_states(world, cfg, h_prompt, tokens)
    p = np.exp(log_softmax(pred @ W.T, axis=1))
    p[np.arange(len(tokens)), tokens] -= 1.0
    return -cfg.beta * p.T @ pred


def ex_step(h_plus, h_minus, lr: float) -> np.ndarray:
    """u after one real gradient step (autograd on the Bradley–Terry loss) from u0 = 0 on the triple
    whose EX-RM states are h_plus, h_minus (D,): the observation the prediction is checked against."""
    u = torch.zeros(len(h_plus), dtype=torch.float64, requires_grad=True)
    hp, hm = torch.as_tensor(h_plus, dtype=torch.float64), torch.as_tensor(h_minus, dtype=torch.float64)
    bradley_terry(hp @ u, hm @ u).backward()
    return (u - lr * u.grad).detach().numpy()


def make_variants(world, cfg, source, other, rng):
    """Responses from ``source`` keeping k tokens (k = 0..L) and replacing the rest by unrelated
    tokens or by synonyms. Returns a list of dicts (group, kept fraction, tokens)."""
    L, S = cfg.resp_len, cfg.synonyms
    used = set(world.concept_of[source]) | set(world.concept_of[other])
    free = np.array([c for c in range(cfg.n_concepts) if c not in used])
    out = []
    for k in np.linspace(0, L, cfg.overlap_levels).round().astype(int):
        for _ in range(cfg.draws):
            keep = np.zeros(L, bool)
            keep[rng.choice(L, k, replace=False)] = True
            unrelated = source.copy()
            unrelated[~keep] = rng.choice(free, (~keep).sum()) * S + rng.integers(0, S, (~keep).sum())
            para = source.copy()
            shift = rng.integers(1, S, (~keep).sum())  # a different token of the same concept
            para[~keep] = world.concept_of[source[~keep]] * S + (source[~keep] % S + shift) % S
            out.append(dict(group="unrelated", overlap=k / L, tokens=unrelated))
            out.append(dict(group="synonyms", overlap=k / L, tokens=para))
    return out


def one_step(world: World, cfg: Config, rng: np.random.Generator, lrs=None):
    """Train triple, evaluation responses, predicted and observed Δr for each RM."""
    L, S = cfg.resp_len, cfg.synonyms
    concepts = rng.permutation(cfg.n_concepts)
    y_plus = concepts[:L] * S + rng.integers(0, S, L)
    y_minus = concepts[L : 2 * L] * S + rng.integers(0, S, L)
    W0, g = world.W0, 0.5  # r ≡ 0 at the reference, so g = σ(0)
    plus = token_states(world, cfg, world.h_train, y_plus, W0)
    minus = token_states(world, cfg, world.h_train, y_minus, W0)
    _, last_p, mean_p = seq_states(world, cfg, world.h_train, y_plus)
    _, last_m, mean_m = seq_states(world, cfg, world.h_train, y_minus)
    grad_loss = -g * (
        im_gradient(world, cfg, world.h_train, y_plus, W0)
        - im_gradient(world, cfg, world.h_train, y_minus, W0)
    )
    u_last = ex_step(last_p, last_m, cfg.lr)  # the EX-RM after one real step, for each state choice
    u_mean = ex_step(mean_p, mean_m, cfg.lr)
    evals = [
        dict(group="original", overlap=1.0, source="y+", tokens=y_plus),
        dict(group="original", overlap=1.0, source="y-", tokens=y_minus),
    ]
    for src, other, name in ((y_plus, y_minus, "y+"), (y_minus, y_plus, "y-")):
        evals += [dict(v, source=name) for v in make_variants(world, cfg, src, other, rng)]
    lrs = lrs or (cfg.lr,)
    for e in evals:
        bar = token_states(world, cfg, world.h_eval, e["tokens"], W0)
        _, last, mean = seq_states(world, cfg, world.h_eval, e["tokens"])
        e["ex_pred"] = ex_reward_change(last, last_p, last_m, lr=cfg.lr, g=g)
        e["ex_obs"] = float(last @ u_last)  # r(u1) − r(u0), u0 = 0: re-scored after the real step
        e["ex_mean_pred"] = ex_reward_change(mean, mean_p, mean_m, lr=cfg.lr, g=g)
        e["ex_mean_obs"] = float(mean @ u_mean)
        for lr in lrs:
            e[f"im_pred@{lr:g}"] = im_reward_change(bar, plus, minus, beta=cfg.beta, lr=lr, g=g)
            e[f"im_obs@{lr:g}"] = im_reward(world, cfg, W0 - lr * grad_loss, world.h_eval, e["tokens"])
        e["im_pred"], e["im_obs"] = e[f"im_pred@{cfg.lr:g}"], e[f"im_obs@{cfg.lr:g}"]
        e["hidden_cos"] = float(
            np.mean(
                [
                    np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b)
                    for a, b in zip(bar.hidden, (plus if e["source"] == "y+" else minus).hidden, strict=True)
                ]
            )
        )
    return evals


def overlap_curve(evals, key):
    """Mean Δr / Δr(original y+) for responses derived from y+, per group and kept fraction."""
    ref = next(e[key] for e in evals if e["group"] == "original" and e["source"] == "y+")
    out = []
    for group in ("unrelated", "synonyms"):
        for ov in sorted({e["overlap"] for e in evals if e["group"] == group}):
            vals = [
                e[key] for e in evals if e["group"] == group and e["source"] == "y+" and e["overlap"] == ov
            ]
            out.append(dict(group=group, overlap=ov, relative_change=float(np.mean(vals) / ref)))
    return out


def run(cfg: Config) -> dict:
    rng = np.random.default_rng(cfg.seed)
    world = make_world(cfg, cfg.tau, rng)
    lrs = tuple(sorted(set(cfg.lr_grid) | {cfg.lr}, reverse=True))
    evals = one_step(world, cfg, rng, lrs)
    pearson = {
        k: float(pearsonr([e[f"{k}_pred"] for e in evals], [e[f"{k}_obs"] for e in evals])[0])
        for k in ("ex", "ex_mean", "im")
    }
    rel_err = {
        f"{lr:g}": float(
            np.linalg.norm([e[f"im_pred@{lr:g}"] - e[f"im_obs@{lr:g}"] for e in evals])
            / np.linalg.norm([e[f"im_obs@{lr:g}"] for e in evals])
        )
        for lr in lrs
    }
    curves = {k: overlap_curve(evals, f"{k}_pred") for k in ("ex", "ex_mean", "im")}
    full_para = [e for e in evals if e["group"] == "synonyms" and e["overlap"] == 0 and e["source"] == "y+"]
    para = {k: float(np.mean([e[f"{k}_pred"] for e in full_para])) for k in ("ex", "ex_mean", "im")}
    orig = {
        k: next(e[f"{k}_pred"] for e in evals if e["group"] == "original" and e["source"] == "y+")
        for k in ("ex", "ex_mean", "im")
    }
    tau_rows = []
    for tau in cfg.tau_sweep:
        trng = np.random.default_rng([cfg.seed, int(1000 * tau)])
        ev = one_step(make_world(cfg, tau, trng), cfg, trng)
        fp = [e for e in ev if e["group"] == "synonyms" and e["overlap"] == 0 and e["source"] == "y+"]
        o = {
            k: next(e[f"{k}_pred"] for e in ev if e["group"] == "original" and e["source"] == "y+")
            for k in ("ex", "im")
        }
        tau_rows.append(
            dict(
                tau=tau,
                hidden_cos=float(np.mean([e["hidden_cos"] for e in fp])),
                ex_relative_change=float(np.mean([e["ex_pred"] for e in fp]) / o["ex"]),
                im_relative_change=float(np.mean([e["im_pred"] for e in fp]) / o["im"]),
                im_fraction_wrong_sign=float(np.mean([e["im_pred"] < 0 for e in fp])),
            )
        )
    return {
        "pearson_pred_vs_obs": pearson,
        "im_relative_error_by_lr": rel_err,
        "overlap_curve": curves,
        "paraphrase": {
            "ex_relative_change": para["ex"] / orig["ex"],
            "ex_mean_relative_change": para["ex_mean"] / orig["ex_mean"],
            "im_relative_change": para["im"] / orig["im"],
            "im_fraction_wrong_sign": float(np.mean([e["im_pred"] < 0 for e in full_para])),
            "ex_fraction_wrong_sign": float(np.mean([e["ex_pred"] < 0 for e in full_para])),
        },
        "tau_sweep": tau_rows,
        "points": [{k: v for k, v in e.items() if k != "tokens"} for e in evals],
    }


def plot(summary: dict, cfg: Config):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = summary["points"]
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.3))
    for key, color, label in (("im", "C3", "IM-RM"), ("ex", "C0", "EX-RM")):
        pred = np.array([p[f"{key}_pred"] for p in pts])
        obs = np.array([p[f"{key}_obs"] for p in pts])
        scale = np.abs(obs).max()
        ax[0].scatter(
            pred / scale,
            obs / scale,
            s=8,
            c=color,
            alpha=0.6,
            label=f"{label} (r = {summary['pearson_pred_vs_obs'][key]:.6f})",
        )
    ax[0].plot([-1, 1], [-1, 1], "k:", lw=0.8)
    ax[0].set(
        xlabel="predicted Δr (scaled)",
        ylabel="observed Δr after one GD step (scaled)",
        title=f"theory.dynamics vs actual step (η = {cfg.lr:g})",
    )
    ax[0].legend(fontsize=8)
    styles = {"unrelated": "--", "synonyms": "-"}
    for key, color, label in (
        ("ex", "C0", "EX-RM"),
        ("ex_mean", "C2", "EX-RM (mean states)"),
        ("im", "C3", "IM-RM"),
    ):
        for group, ls in styles.items():
            rows = [r for r in summary["overlap_curve"][key] if r["group"] == group]
            ax[1].plot(
                [r["overlap"] for r in rows],
                [r["relative_change"] for r in rows],
                ls,
                color=color,
                marker="o",
                ms=3,
                label=f"{label}, {group}",
            )
    ax[1].axhline(0, color="k", lw=0.6)
    ax[1].set(
        xlabel="token overlap with y+",
        ylabel="Δr(ȳ) / Δr(y+)",
        title="rest replaced by unrelated tokens (--) or synonyms (—)",
    )
    ax[1].legend(fontsize=7)
    tw = summary["tau_sweep"]
    ax[2].plot([r["hidden_cos"] for r in tw], [r["ex_relative_change"] for r in tw], "C0o-", label="EX-RM")
    ax[2].plot([r["hidden_cos"] for r in tw], [r["im_relative_change"] for r in tw], "C3s-", label="IM-RM")
    ax[2].axhline(0, color="k", lw=0.6)
    ax[2].set(
        xlabel="hidden-state cosine, paraphrase vs y+ (τ varied)",
        ylabel="Δr(paraphrase) / Δr(y+)",
        title="full paraphrases (0 % token overlap)",
    )
    ax[2].legend(fontsize=8)
    fig.tight_layout()
    return fig


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap)
    ap.add_argument("--lr", type=float, default=Config.lr, help="learning rate η of the step")
    args = ap.parse_args(argv)
    cfg = replace(Config(seed=args.seed, lr=args.lr), **(QUICK if args.quick else {}))
    summary = run_and_save(NAME, cfg, run, plot, args)
    pa = summary["paraphrase"]
    print_table(
        [
            (
                "EX-RM",
                summary["pearson_pred_vs_obs"]["ex"],
                pa["ex_relative_change"],
                pa["ex_fraction_wrong_sign"],
            ),
            (
                "EX-RM (mean states)",
                summary["pearson_pred_vs_obs"]["ex_mean"],
                pa["ex_mean_relative_change"],
                "-",
            ),
            (
                "IM-RM",
                summary["pearson_pred_vs_obs"]["im"],
                pa["im_relative_change"],
                pa["im_fraction_wrong_sign"],
            ),
        ],
        ("model", "pearson pred/obs", "Δr(paraphrase)/Δr(y+)", "paraphrases moved wrong way"),
    )
    print(
        "IM prediction rel. error by η: "
        + ", ".join(f"{k}: {v:.2e}" for k, v in summary["im_relative_error_by_lr"].items())
    )
    print(f"[{summary['seconds']:.1f} s] wrote {args.out_dir / (NAME + '.json')}")
    return summary


if __name__ == "__main__":
    main()
