"""Verification does not require generation (theory/README.md §2, the paper's Theorem 1).

Setting: one prompt x, a finite response space, π_ref a distribution over it, C ⊆ responses the
correct ones with p = π_ref(C) ∈ (0, 1). An IM-RM r(y) = β ln(π_θ(y)/π_ref(y)) is a δ-verifier if
r(y+) ≥ r(y−) + δ for every y+ ∈ C, y− ∉ C.

Statement (derived here, checked in tests/theory/test_verification.py):

  (a) Tilting.  π_tilt(y) ∝ π_ref(y) · exp(δ·1[y ∈ C]/β) makes r an exact δ-verifier
      (r(y+) − r(y−) = δ for every pair) with
          π_tilt(C) = τ(p) := e^{δ/β} p / (e^{δ/β} p + 1 − p)  ≤  min(1, e^{δ/β} · p).
  (b) Optimality.  Every π_θ whose IM-RM is a δ-verifier has π_θ(C) ≥ τ(p): the tilt is the
      verifier that generates correct outputs least.
      Proof: let a = min_{y∈C} π_θ(y)/π_ref(y), b = max_{y∉C} π_θ(y)/π_ref(y). The verifier
      condition is a ≥ e^{δ/β} b. Then π_θ(C) ≥ a p and 1 − π_θ(C) ≤ b (1 − p), so
      s = π_θ(C) satisfies s (1 − p) ≥ e^{δ/β} p (1 − s), i.e. s ≥ τ(p).

So a perfect verifier (any margin δ) exists whose generation probability of a correct output is
at most e^{δ/β} times the reference's: when π_ref(C) is tiny (Hamiltonian cycles among all vertex
sequences), verification is perfect while generation stays ≈ 0. The constant is e^{δ/β}; the
paper's version (β = 1, δ = 1) reads π(C) ≤ e · π_ref(C).
"""

from __future__ import annotations

import numpy as np

__all__ = ["tilted_correct_mass", "tilted_policy", "tilting_bound", "verifier_margin"]


def _check_p(p) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    if np.any((p < 0) | (p > 1)) or not np.all(np.isfinite(p)):
        raise ValueError("p = π_ref(C) must lie in [0, 1]")
    return p


def tilted_correct_mass(p, *, margin: float, beta: float):
    """τ(p) = e^{δ/β} p / (e^{δ/β} p + 1 − p): π_θ(C) of the tilted verifier, and the minimum of
    π_θ(C) over all δ-verifier IM-RMs. p: scalar or array of π_ref(C(x)|x). Stable for large δ/β."""
    p = _check_p(p)
    t = margin / beta
    # τ = σ(t + logit p), written to avoid overflow of e^{δ/β}
    with np.errstate(divide="ignore"):
        z = t + np.log(p) - np.log1p(-p)
    out = 1.0 / (1.0 + np.exp(-z))
    return float(out) if out.ndim == 0 else out


def tilting_bound(p, *, margin: float, beta: float):
    """The simple upper bound min(1, e^{δ/β} · p) ≥ τ(p) (theory/README.md §2's "≤ π_ref(C)·const")."""
    p = _check_p(p)
    out = np.minimum(1.0, np.exp(np.minimum(margin / beta, 700.0)) * p)
    return float(out) if out.ndim == 0 else out


def tilted_policy(p_ref, correct, *, margin: float, beta: float) -> np.ndarray:
    """π_tilt ∝ π_ref · exp(δ·1[y∈C]/β) over an enumerated response space.

    p_ref: (N,) reference probabilities summing to 1; correct: (N,) bool membership in C.
    Returns (N,) probabilities. The IM-RM β ln(π_tilt/π_ref) is an exact δ-verifier.
    """
    p_ref = np.asarray(p_ref, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    if p_ref.shape != correct.shape or p_ref.ndim != 1:
        raise ValueError(f"p_ref {p_ref.shape} and correct {correct.shape} must be matching 1-D arrays")
    if np.any(p_ref < 0) or not np.isclose(p_ref.sum(), 1.0, atol=1e-9):
        raise ValueError("p_ref must be a probability vector")
    if correct.all() or not correct.any():
        raise ValueError("C must be a non-empty proper subset of the responses")
    log_w = np.log(p_ref) + (margin / beta) * correct
    log_w -= log_w.max()
    w = np.exp(log_w)
    return w / w.sum()


def verifier_margin(rewards, correct) -> float:
    """min_{y∈C} r(y) − max_{y∉C} r(y): r is a δ-verifier iff this is ≥ δ. rewards, correct: (N,)."""
    r = np.asarray(rewards, dtype=np.float64)
    c = np.asarray(correct, dtype=bool)
    if r.shape != c.shape or not c.any() or c.all():
        raise ValueError("need matching (N,) rewards and a non-empty proper subset C")
    return float(r[c].min() - r[~c].max())
