"""The max-margin separator that gradient descent on an EX-RM converges to (theory/README.md §4).

    u* = argmin_u ‖u‖²  s.t.  ⟨u, X_i⟩ ≥ 1  for every row X_i = h_{x_i, y_i+} − h_{x_i, y_i−}

Gradient descent on the logistic (Bradley–Terry) loss from u = 0 over linearly separable data
converges in direction to u*/‖u*‖ (Soudry et al., 2018). The geometric margin is 1/‖u*‖ and the
support vectors are the rows with ⟨u*, X_i⟩ = 1. Solved as a QP with cvxpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MaxMarginResult", "NotSeparableError", "max_margin_separator"]


class NotSeparableError(ValueError):
    """No u satisfies ⟨u, X_i⟩ > 0 for all rows: the preference data are not linearly separable."""


@dataclass(frozen=True)
class MaxMarginResult:
    """u: (D,) the separator; margin: 1/‖u‖; support: (S,) row indices with ⟨u, X_i⟩ ≤ 1 + tol;
    dual: (N,) multipliers α ≥ 0 with u = Σ α_i X_i (KKT); status: the solver's status string."""

    u: np.ndarray
    margin: float
    support: np.ndarray
    dual: np.ndarray
    status: str


def max_margin_separator(X, *, support_tol: float = 1e-6, solver: str | None = None) -> MaxMarginResult:
    """Solve min ‖u‖² s.t. X u ≥ 1 for X of shape (N, D), N ≥ 1.

    Raises :class:`NotSeparableError` (naming the offending rows when it can) if the constraints are
    infeasible, ValueError for NaN/inf or a wrong shape, RuntimeError if the solver fails.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"X must be (N, D) with N ≥ 1 rows of differences, got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        bad = np.unique(np.nonzero(~np.isfinite(X))[0])[:5].tolist()
        raise ValueError(f"X contains NaN or inf (rows {bad})")
    zero = np.nonzero(np.linalg.norm(X, axis=1) == 0)[0]
    if zero.size:
        raise NotSeparableError(
            f"rows {zero[:5].tolist()} are all-zero differences (chosen and rejected have identical "
            "representations): no separator has a positive margin on them"
        )
    import cvxpy as cp  # here, not at import time: `import theory` works without cvxpy

    u = cp.Variable(X.shape[1])
    constraint = X @ u >= 1
    problem = cp.Problem(cp.Minimize(cp.sum_squares(u)), [constraint])
    try:
        problem.solve(solver=solver)
    except cp.error.SolverError as exc:  # pragma: no cover - depends on the installed solvers
        raise RuntimeError(f"cvxpy solver failed on the max-margin QP: {exc}") from exc
    if problem.status in (cp.INFEASIBLE, cp.INFEASIBLE_INACCURATE):
        raise NotSeparableError(
            f"the {X.shape[0]} preference differences are not linearly separable "
            "(no u with ⟨u, h+ − h−⟩ ≥ 1 for all pairs); the EX-RM's direction does not converge to a "
            "max-margin separator on such data"
        )
    if problem.status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE) or u.value is None:
        raise RuntimeError(f"max-margin QP ended with solver status {problem.status!r}")
    u_star = np.asarray(u.value, dtype=np.float64)
    scores = X @ u_star
    dual = np.maximum(np.asarray(constraint.dual_value, dtype=np.float64).reshape(-1), 0.0) / 2.0
    support = np.nonzero(scores <= 1.0 + support_tol)[0]
    return MaxMarginResult(u_star, float(1.0 / np.linalg.norm(u_star)), support, dual, problem.status)
