"""theory.verification: the tilting construction, its exact generation mass and its optimality."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from theory import im_reward, tilted_correct_mass, tilted_policy, tilting_bound, verifier_margin


def random_autoregressive_ref(vocab, length, rng):
    """π_ref over all sequences of a fixed length, a product of random next-token conditionals."""
    seqs = list(itertools.product(range(vocab), repeat=length))
    cond = {}
    probs = []
    for s in seqs:
        p = 1.0
        for k in range(length):
            if s[:k] not in cond:
                cond[s[:k]] = rng.dirichlet(np.ones(vocab))
            p *= cond[s[:k]][s[k]]
        probs.append(p)
    return seqs, np.array(probs)


@pytest.mark.parametrize("margin,beta", [(1.0, 1.0), (0.05, 0.01), (3.0, 0.5)])
def test_tilt_is_exact_verifier_with_predicted_generation_mass(margin, beta):
    rng = np.random.default_rng(0)
    seqs, p_ref = random_autoregressive_ref(vocab=3, length=4, rng=rng)
    correct = np.array([s[0] == 0 and s[-1] == 2 and len(set(s)) == 3 for s in seqs])  # a sparse C
    p = p_ref[correct].sum()
    pi = tilted_policy(p_ref, correct, margin=margin, beta=beta)
    r = im_reward(np.log(pi), np.log(p_ref), beta)
    assert np.isclose(verifier_margin(r, correct), margin, rtol=1e-10)
    # every correct/incorrect pair is separated by exactly δ
    assert np.ptp(r[correct]) < 1e-12 and np.ptp(r[~correct]) < 1e-12
    assert np.isclose(pi[correct].sum(), tilted_correct_mass(p, margin=margin, beta=beta), rtol=1e-12)
    assert pi[correct].sum() <= tilting_bound(p, margin=margin, beta=beta) + 1e-15


def test_tilted_policy_is_an_autoregressive_lm():
    """The tilt is realisable by next-token conditionals: rebuild them from prefix masses."""
    rng = np.random.default_rng(1)
    seqs, p_ref = random_autoregressive_ref(vocab=3, length=3, rng=rng)
    correct = np.array([s == (0, 1, 2) or s == (2, 1, 0) for s in seqs])
    pi = dict(zip(seqs, tilted_policy(p_ref, correct, margin=0.1, beta=0.01), strict=True))
    prefix = {}
    for s, q in pi.items():
        for k in range(len(s) + 1):
            prefix[s[:k]] = prefix.get(s[:k], 0.0) + q
    for s, q in pi.items():
        prod = np.prod([prefix[s[: k + 1]] / prefix[s[:k]] for k in range(len(s))])
        assert np.isclose(prod, q, rtol=1e-12)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.01, 5.0), st.floats(0.01, 2.0))
def test_every_verifier_generates_at_least_the_tilt(seed, margin, beta):
    """Optimality: any π_θ whose IM-RM is a δ-verifier has π_θ(C) ≥ τ(π_ref(C))."""
    rng = np.random.default_rng(seed)
    n = 12
    p_ref = rng.dirichlet(np.ones(n))
    correct = np.zeros(n, dtype=bool)
    correct[rng.choice(n, size=rng.integers(1, n), replace=False)] = True
    # arbitrary likelihood ratios, shifted so that min over C ≥ e^{δ/β} · max over not-C
    log_ratio = rng.normal(size=n)
    shift = margin / beta + log_ratio[~correct].max() - log_ratio[correct].min() + rng.exponential()
    log_ratio[correct] += max(shift, 0.0)
    w = p_ref * np.exp(log_ratio - log_ratio.max())
    pi = w / w.sum()
    r = im_reward(np.log(pi), np.log(p_ref), beta)
    assert verifier_margin(r, correct) >= margin * (1 - 1e-9)
    tau = tilted_correct_mass(p_ref[correct].sum(), margin=margin, beta=beta)
    assert pi[correct].sum() >= tau * (1 - 1e-9)


def test_tiny_reference_mass_means_no_generation():
    # 7-vertex Hamiltonian-cycle scale: p ~ 1e-6 of all strings; margin δ = 1e-2 at β = 1e-2
    p = 1e-6
    assert tilted_correct_mass(p, margin=0.01, beta=0.01) < 3e-6
    assert tilted_correct_mass(p, margin=0.01, beta=0.01) <= tilting_bound(p, margin=0.01, beta=0.01)
    # huge δ/β does not overflow
    assert tilted_correct_mass(1e-300, margin=1e4, beta=1e-3) == 1.0


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="proper subset"):
        tilted_policy([0.5, 0.5], [True, True], margin=1, beta=1)
    with pytest.raises(ValueError, match="probability vector"):
        tilted_policy([0.5, 0.6], [True, False], margin=1, beta=1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tilted_correct_mass(1.5, margin=1, beta=1)
