"""lm_probes.stats: pair outcomes, winner rules, the paired bootstrap, sample sizes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lm_probes.stats import paired_bootstrap_ci, pairs_needed, plain_winner, win_rates, winner
from theory import accuracy, pair_outcomes


def test_pair_outcomes_are_the_accuracy_with_ties_as_half():
    rc, rr = np.array([1.0, 2.0, 3.0, 0.5]), np.array([1.0, 1.0, 4.0, 0.0])
    out = pair_outcomes(rc, rr)
    assert out.tolist() == [0.5, 1.0, 0.0, 1.0]
    assert out.mean() == pytest.approx(accuracy(rc, rr).half_ties)


def test_winner_rules_on_constructed_accuracies():
    ex = np.array([1.0] * 40 + [0.0] * 10)  # EX 0.8
    im = np.array([0.0] * 40 + [1.0] * 10)  # IM 0.2: EX's CI lies above 0
    d, lo, hi = paired_bootstrap_ci(ex, im, n_boot=2000, seed=1)
    assert d == pytest.approx(0.6) and lo > 0 and winner(lo, hi) == "ex_rm"
    d, lo, hi = paired_bootstrap_ci(im, ex, n_boot=2000, seed=1)
    assert hi < 0 and winner(lo, hi) == "im_rm"
    # one pair of difference in 50: the plain rule names a winner, the CI rule a tie
    a = np.array([1.0] * 26 + [0.0] * 24)
    b = np.array([1.0] * 25 + [0.0] * 25)
    d, lo, hi = paired_bootstrap_ci(a, b, n_boot=2000, seed=1)
    assert lo <= 0 <= hi and winner(lo, hi) == "tie" and plain_winner(a.mean(), b.mean()) == "ex_rm"
    assert plain_winner(0.5, 0.5) == "tie"
    w = win_rates(["ex_rm", "ex_rm", "tie", "im_rm"])
    assert w == {"ex_rm": 0.5, "im_rm": 0.25, "tie": 0.25, "n": 4}
    assert math.isnan(win_rates([])["tie"])
    with pytest.raises(ValueError, match="paired scores"):
        paired_bootstrap_ci(a, b[:-1])


def test_paired_bootstrap_ci_covers_the_true_difference_about_95_percent():
    """Synthetic paired outcomes with a known mean difference: the percentile CI should cover it in
    ≈ 95 % of repetitions (binomial slack for 300 repetitions; percentile CIs undercover slightly)."""
    rng = np.random.default_rng(0)
    n, reps, p_ex = 60, 300, 0.7
    covered = 0
    for r in range(reps):
        u = rng.random(n)  # correlated pairs: both right on easy pairs
        a = (u < p_ex).astype(float)
        b = (rng.random(n) < np.where(u < p_ex, 0.75, 0.3)).astype(float)
        true = p_ex - (p_ex * 0.75 + (1 - p_ex) * 0.3)
        _, lo, hi = paired_bootstrap_ci(a, b, n_boot=1000, seed=r)
        covered += lo <= true <= hi
    assert 0.90 <= covered / reps <= 0.985


def test_pairs_needed_matches_the_normal_approximation():
    d = np.array([1.0, 0.0] * 10 + [0.0] * 5)  # mean 0.4, sd ≈ 0.5
    n = pairs_needed(d)
    sd = d.std(ddof=1)
    assert n == math.ceil((1.959963984540054 * sd / 0.4) ** 2)
    # at n* pairs the normal CI half-width equals the mean difference
    assert 1.96 * sd / math.sqrt(n) == pytest.approx(0.4, rel=0.1)
    assert pairs_needed(np.array([1.0, -1.0])) == math.inf


def test_seed_pair_bootstrap_resamples_whole_clusters():
    from lm_probes.stats import seed_pair_bootstrap

    rng = np.random.default_rng(0)
    base = rng.normal(0.0, 1.0, (1, 50))
    d, clusters = np.repeat(base, 4, axis=1), np.repeat(np.arange(50), 4)  # each value 4 times
    width = lambda lo, hi: hi - lo  # noqa: E731
    _, lo_c, hi_c, _ = seed_pair_bootstrap(d, clusters, n_boot=4000)
    _, lo_1, hi_1, _ = seed_pair_bootstrap(base, np.arange(50), n_boot=4000)
    _, lo_i, hi_i, _ = seed_pair_bootstrap(d, np.arange(200), n_boot=4000)
    assert width(lo_c, hi_c) == pytest.approx(
        width(lo_1, hi_1), rel=0.15
    )  # 4 copies carry no new information
    assert width(lo_i, hi_i) < 0.65 * width(lo_c, hi_c)  # ... which pair-wise resampling would pretend


def test_seed_pair_bootstrap_resamples_seeds():
    from lm_probes.stats import seed_pair_bootstrap

    rng = np.random.default_rng(1)
    d = np.array([[-0.2], [0.0], [0.3]]) + rng.normal(0, 0.01, (3, 100))  # seeds disagree, pairs barely
    est, lo, hi, _ = seed_pair_bootstrap(d, np.arange(100), n_boot=4000)
    _, lo_p, hi_p, _ = seed_pair_bootstrap(d, np.arange(100), n_boot=4000, resample_seeds=False)
    assert est == pytest.approx(d.mean()) and lo < est < hi
    assert hi - lo > 0.25 and hi_p - lo_p < 0.01
    with pytest.raises(ValueError, match="cluster labels"):
        seed_pair_bootstrap(d, np.arange(99))


def test_seed_pair_bootstrap_covers_the_mean_of_a_two_level_model():
    from lm_probes.stats import seed_pair_bootstrap

    rng = np.random.default_rng(2)
    hits = 0
    for _ in range(150):  # 5 seeds (sd 0.03) × 60 problems of 2 pairs (sd 0.2, 0.2 within)
        d = 0.1 + rng.normal(0, 0.03, (5, 1)) + np.repeat(rng.normal(0, 0.2, (1, 60)), 2, 1)
        d = d + rng.normal(0, 0.2, d.shape)
        _, lo, hi, _ = seed_pair_bootstrap(d, np.repeat(np.arange(60), 2), n_boot=1000, seed=3)
        hits += lo <= 0.1 <= hi
    assert hits / 150 >= 0.85  # (a percentile bootstrap over 5 seeds covers a little under 95 %)


def test_seeds_and_pairs_needed_follow_the_variance_model():
    from lm_probes.stats import seeds_and_pairs_needed

    rng = np.random.default_rng(4)
    d = np.tile(rng.normal(0.05, 0.5, (1, 400)), (3, 1))  # identical seeds: all variance is the pairs'
    need = seeds_and_pairs_needed(d, np.arange(400), target=0.05)
    assert need["v_seeds"] == pytest.approx(0.0, abs=1e-12)
    assert need["pairs_needed"] == pytest.approx(400 * (need["half_width"] / 0.05) ** 2, rel=0.02)
    assert need["seeds_needed"] == math.inf or need["half_width"] <= 0.05  # more seeds cannot help
    noisy = d + np.array([[-0.3], [0.0], [0.3]])  # now seeds disagree more than the target allows
    assert seeds_and_pairs_needed(noisy, np.arange(400), target=0.05)["pairs_needed"] == math.inf


def test_wilson_interval_against_its_closed_form_values():
    from lm_probes.stats import wilson_ci

    lo, hi = wilson_ci(0, 64)  # k = 0: [0, z²/(n + z²)]
    assert lo == 0.0 and hi == pytest.approx(1.959964**2 / (64 + 1.959964**2), rel=1e-6)
    assert wilson_ci(5, 10) == pytest.approx((0.236593, 0.763407), abs=1e-6)  # textbook value
    assert wilson_ci(10, 10)[1] == 1.0 and wilson_ci(10, 10)[0] == pytest.approx(0.722467, abs=1e-6)
    with pytest.raises(ValueError):
        wilson_ci(3, 2)
