"""Reward models, the Bradley–Terry loss and accuracy with ties (theory/README.md §1).

    r_EX(x, y) = ⟨u, h_{x,y}⟩                        explicit RM: linear head on the last hidden state
    r_IM(x, y) = β · (ln π_θ(y|x) − ln π_ref(y|x))   implicit RM (DPO), summed over response tokens
    ℓ          = −ln σ(r(x, y+) − r(x, y−))           Bradley–Terry loss
    g          = σ(r(x, y−) − r(x, y+)) = −∂ℓ/∂(r+ − r−)

All functions take numpy arrays (anything ``np.asarray`` accepts) and compute in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit

__all__ = ["Accuracy", "accuracy", "bt_grad_scale", "bt_loss", "ex_reward", "im_reward"]


def _f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _pair(r_chosen, r_rejected) -> tuple[np.ndarray, np.ndarray]:
    rc, rr = _f64(r_chosen), _f64(r_rejected)
    if rc.shape != rr.shape:
        raise ValueError(f"r_chosen has shape {rc.shape} but r_rejected has shape {rr.shape}")
    if not (np.all(np.isfinite(rc)) and np.all(np.isfinite(rr))):
        raise ValueError("rewards contain NaN or inf")
    return rc, rr


def ex_reward(u, h) -> np.ndarray:
    """Explicit reward r_EX = ⟨u, h⟩.

    u: (D,) linear head.  h: (..., D) last-token hidden states.  Returns (...,).
    """
    u, h = _f64(u), _f64(h)
    if u.ndim != 1 or h.shape[-1] != u.shape[0]:
        raise ValueError(f"u must be (D,) and h (..., D); got u {u.shape}, h {h.shape}")
    return h @ u


def im_reward(logp, logp_ref, beta: float) -> np.ndarray:
    """Implicit (DPO) reward r_IM = β · (ln π_θ(y|x) − ln π_ref(y|x)).

    logp, logp_ref: (...,) sequence log-probabilities, already summed over the response tokens
    (not length-normalised).  beta: the KL coefficient (paper: 0.01).  Returns (...,).
    """
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    return beta * (_f64(logp) - _f64(logp_ref))


def bt_loss(r_chosen, r_rejected, reduction: str = "mean"):
    """Bradley–Terry loss −ln σ(r+ − r−) = softplus(r− − r+), computed stably.

    r_chosen, r_rejected: (N,) rewards.  reduction: "mean" (float), "sum" (float) or "none" ((N,)).
    """
    rc, rr = _pair(r_chosen, r_rejected)
    per_pair = np.logaddexp(0.0, rr - rc)
    if reduction == "none":
        return per_pair
    if reduction == "mean":
        return float(per_pair.mean())
    if reduction == "sum":
        return float(per_pair.sum())
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def bt_grad_scale(r_chosen, r_rejected) -> np.ndarray:
    """g = σ(r− − r+): the magnitude of ∂ℓ/∂(r+ − r−) that scales a gradient step (theory/README.md §3)."""
    rc, rr = _pair(r_chosen, r_rejected)
    return expit(rr - rc)


@dataclass(frozen=True)
class Accuracy:
    """Preference accuracy with ties made visible (an untrained IM-RM ties everywhere).

    strict: fraction with r+ > r− (beyond ``atol``).  tie_rate: fraction with |r+ − r−| ≤ atol.
    half_ties: strict + tie_rate / 2 (chance is ½).  normalized_abs_margin: mean |r+ − r−| divided
    by the standard deviation (ddof=1) of all 2N rewards, as in the paper's code, so EX- and IM-RMs
    with very different reward scales can be compared.  n: number of pairs.
    """

    strict: float
    tie_rate: float
    half_ties: float
    normalized_abs_margin: float
    n: int

    def as_dict(self) -> dict:
        return {
            "accuracy": self.strict,
            "tie_rate": self.tie_rate,
            "accuracy_half_ties": self.half_ties,
            "normalized_abs_margin": self.normalized_abs_margin,
            "n": self.n,
        }


def pair_outcomes(r_chosen, r_rejected, atol: float = 0.0) -> np.ndarray:
    """Per-pair outcome of a reward model: 1 if r+ > r−, ½ on a tie (|r+ − r−| ≤ atol), 0 otherwise.

    r_chosen, r_rejected: (N,) rewards → (N,) in {0, ½, 1}; its mean is the accuracy with ties as ½.
    """
    rc, rr = _pair(r_chosen, r_rejected)
    diff = rc - rr
    ties = np.abs(diff) <= atol
    return np.where(ties, 0.5, (diff > 0).astype(float))


def accuracy(r_chosen, r_rejected, atol: float = 0.0) -> Accuracy:
    """Strict accuracy, tie rate, accuracy with ties as ½, and the normalised absolute margin
    mean |r+ − r−| / (std of all 2N rewards, unbiased, + 1e-8).

    r_chosen, r_rejected: (N,) rewards of the preferred and dispreferred responses, N ≥ 1.
    atol: differences with |r+ − r−| ≤ atol count as ties (default 0: exact ties only).
    """
    rc, rr = _pair(r_chosen, r_rejected)
    if rc.ndim != 1 or rc.size == 0:
        raise ValueError(f"accuracy needs 1-D reward arrays with at least one pair, got shape {rc.shape}")
    out = pair_outcomes(rc, rr, atol)
    std = np.concatenate([rc, rr]).std(ddof=1)
    margin = float(np.mean(np.abs(rc - rr)) / (std + 1e-8))
    strict, tie_rate = float((out == 1).mean()), float((out == 0.5).mean())
    return Accuracy(strict, tie_rate, strict + tie_rate / 2, margin, int(rc.size))
