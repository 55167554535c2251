"""Comparing two reward models on the same evaluation pairs: paired bootstrap, winners, win rates.

    diff, lo, hi = paired_bootstrap_ci(outcomes_ex, outcomes_im, n_boot=10_000, seed=0)
    winner(lo, hi)                       # "ex_rm" if lo > 0, "im_rm" if hi < 0, else "tie"
    win_rates(["ex_rm", "tie", "im_rm"])  # {"ex_rm": ⅓, "im_rm": ⅓, "tie": ⅓, "n": 3}

The definition of a win (the paper's code has none): per evaluation set, the difference of the two
accuracies (ties as ½) with a 95 % paired-bootstrap CI over the set's pairs; EX-RM wins when the CI lies
above 0, IM-RM when it lies below, a tie otherwise. ``plain_winner`` is the "higher accuracy wins" rule
reported beside it.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

MODELS = ("ex_rm", "im_rm")


def paired_bootstrap_ci(
    a, b, *, n_boot: int = 10_000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of a − b and its percentile bootstrap CI, resampling pairs with replacement.

    a, b: (N,) per-pair scores of two models on the same N ≥ 1 pairs (e.g. outcomes in {0, ½, 1}).
    → (mean difference, lower, upper) at ``level``; ``seed`` fixes the resamples.
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired scores must be two (N,) arrays with N ≥ 1, got {a.shape} and {b.shape}")
    d = a - b
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for i in range(0, n_boot, 1000):  # in blocks: n_boot × N indices at once can be large
        k = min(1000, n_boot - i)
        means[i : i + k] = d[rng.integers(0, d.size, (k, d.size))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(d.mean()), float(lo), float(hi)


def wilson_ci(k: int, n: int, *, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k/n (not degenerate at k = 0 or k = n, unlike a
    bootstrap: 0 of 64 gives [0, 0.056])."""
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"wilson_ci needs 0 ≤ k ≤ n and n ≥ 1, got k={k}, n={n}")
    z = NormalDist().inv_cdf((1 + level) / 2)
    p, z2 = k / n, z * z
    centre, half = (
        (p + z2 / (2 * n)) / (1 + z2 / n),
        z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n),
    )
    return max(0.0, centre - half), min(1.0, centre + half)


def winner(lo: float, hi: float, names=MODELS) -> str:
    """The CI rule: names[0] when the CI of (first − second) lies above 0, names[1] below, else "tie"."""
    return names[0] if lo > 0 else names[1] if hi < 0 else "tie"


def plain_winner(acc_a: float, acc_b: float, names=MODELS) -> str:
    """The "higher accuracy wins" rule (equal accuracies: "tie")."""
    return names[0] if acc_a > acc_b else names[1] if acc_b > acc_a else "tie"


def win_rates(winners: list[str], names=MODELS) -> dict:
    """Fractions of cells won by each model and tied, and the number of cells n."""
    n = len(winners)
    rates = {k: (sum(w == k for w in winners) / n if n else float("nan")) for k in (*names, "tie")}
    return {**rates, "n": n}


def pairs_needed(d, *, level: float = 0.95) -> float:
    """How many pairs would make the observed mean paired difference significant at ``level``, from its
    per-pair spread: n* = (z · sd(d) / mean(d))², the normal-approximation sample size at which the CI's
    half-width equals |mean(d)| (inf when the mean difference is 0; needs N ≥ 2)."""
    d = np.asarray(d, float)
    if d.size < 2:
        raise ValueError("pairs_needed needs at least two paired differences")
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if mean == 0:
        return math.inf
    z = NormalDist().inv_cdf((1 + level) / 2)
    return math.ceil((z * sd / abs(mean)) ** 2)


def seed_pair_bootstrap(
    d,
    clusters,
    *,
    n_boot: int = 10_000,
    level: float = 0.95,
    seed: int = 0,
    resample_seeds: bool = True,
    resample_pairs: bool = True,
) -> tuple[float, float, float, np.ndarray]:
    """Mean of per-seed, per-pair values and its percentile CI resampling both: seeds with replacement
    and clusters of pairs (e.g. the pairs of one problem, which share a chosen response) with
    replacement, the same clusters for every seed (the pairs are matched across seeds).

    d: (K, N) values (K training seeds × N pairs; e.g. EX-RM's minus IM-RM's accuracy change per pair);
    clusters: (N,) cluster labels. ``resample_seeds`` / ``resample_pairs`` = False keeps that level
    fixed (the CI of the other alone). → (mean, lower, upper, the bootstrap means (n_boot,)).
    """
    d = np.asarray(d, float)
    if d.ndim != 2 or d.size == 0 or len(clusters) != d.shape[1]:
        raise ValueError(f"d: (K seeds, N pairs) and N cluster labels; got {d.shape}, {len(clusters)}")
    _, idx = np.unique(np.asarray(clusters), return_inverse=True)
    n_clusters, (k, n) = idx.max() + 1, d.shape
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for i in range(0, n_boot, 500):
        b = min(500, n_boot - i)
        if resample_pairs:
            w = rng.multinomial(n_clusters, np.full(n_clusters, 1 / n_clusters), size=b)[:, idx]  # (b, N)
        else:
            w = np.ones((b, n))
        s = rng.integers(0, k, (b, k)) if resample_seeds else np.broadcast_to(np.arange(k), (b, k))
        per_seed = np.einsum("bkn,bn->bk", d[s], w) / w.sum(1, keepdims=True)
        means[i : i + b] = per_seed.mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(d.mean()), float(lo), float(hi), means


def seeds_and_pairs_needed(d, clusters, target: float, *, n_boot: int = 4000, level: float = 0.95) -> dict:
    """How many pairs (at these seeds) or seeds (at these pairs) would bring the CI half-width of
    :func:`seed_pair_bootstrap`'s mean to ``target``, from the variance model
    Var(K', N') = v_seeds·K/K' + v_pairs·N/N' (v_seeds: the bootstrap variance resampling seeds alone,
    v_pairs: resampling clusters alone; with few seeds v_seeds is itself uncertain). inf: the other
    term alone exceeds the target. → {v_seeds, v_pairs, half_width, pairs_needed, seeds_needed}."""
    d = np.asarray(d, float)
    k, n = d.shape
    v_pairs = float(seed_pair_bootstrap(d, clusters, n_boot=n_boot, resample_seeds=False)[3].var())
    v_seeds = float(seed_pair_bootstrap(d, clusters, n_boot=n_boot, resample_pairs=False)[3].var())
    z = NormalDist().inv_cdf((1 + level) / 2)
    goal = (target / z) ** 2
    pairs = math.ceil(v_pairs * n / (goal - v_seeds)) if goal > v_seeds else math.inf
    seeds = math.ceil(v_seeds * k / (goal - v_pairs)) if goal > v_pairs else math.inf
    return {
        "v_seeds": v_seeds,
        "v_pairs": v_pairs,
        "half_width": z * math.sqrt(v_seeds + v_pairs),
        "pairs_needed": pairs,
        "seeds_needed": seeds,
    }
