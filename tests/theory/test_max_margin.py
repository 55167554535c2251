"""theory.max_margin against KKT conditions, an independent dual solve, and gradient descent."""

import numpy as np
import pytest
from scipy.optimize import minimize

from theory import NotSeparableError, max_margin_separator


def separable(n=40, d=6, seed=0, gap=0.5):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=d)
    w /= np.linalg.norm(w)
    X = rng.normal(size=(n, d))
    X += (gap + np.abs(X @ w) - X @ w)[:, None] * w[None, :]  # push every row to ⟨w, X_i⟩ ≥ gap
    return X


def test_kkt_conditions_hold():
    X = separable()
    res = max_margin_separator(X)
    s = X @ res.u
    assert s.min() >= 1 - 1e-7  # primal feasibility
    assert np.all(res.dual >= 0)  # dual feasibility
    np.testing.assert_allclose(res.dual @ X, res.u, atol=1e-6)  # stationarity: u = Σ α_i X_i
    assert np.abs(res.dual * (s - 1)).max() < 1e-6  # complementary slackness
    assert np.isclose(res.margin, 1 / np.linalg.norm(res.u))
    assert set(np.nonzero(res.dual > 1e-6)[0]) <= set(res.support)
    assert 1 <= len(res.support) <= X.shape[1] + 1


def test_matches_independent_dual_solve():
    """Dual: max Σα − ½‖Xᵀα‖², α ≥ 0, solved by scipy's L-BFGS-B; u = Xᵀα."""
    X = separable(n=30, d=5, seed=1)
    G = X @ X.T
    f = lambda a: 0.5 * a @ G @ a - a.sum()  # noqa: E731
    grad = lambda a: G @ a - 1  # noqa: E731
    sol = minimize(
        f,
        np.zeros(len(X)),
        jac=grad,
        method="L-BFGS-B",
        bounds=[(0, None)] * len(X),
        options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10_000},
    )
    u_dual = X.T @ sol.x
    res = max_margin_separator(X)
    np.testing.assert_allclose(res.u, u_dual, rtol=1e-5, atol=1e-6)


def test_gradient_descent_direction_approaches_max_margin():
    """Soudry et al. 2018: GD on the logistic loss from 0 converges in direction to u* (slowly)."""
    X = separable(n=20, d=4, seed=2, gap=0.2)
    u_star = max_margin_separator(X).u
    u = np.zeros(X.shape[1])
    cos = []
    for t in range(1, 200_001):
        s = X @ u
        u += 0.5 * (X.T @ (1 / (1 + np.exp(s)))) / len(X)
        if t in (100, 200_000):
            cos.append(u @ u_star / np.linalg.norm(u) / np.linalg.norm(u_star))
    print(f"cosine(u_t, u*) at t = 100, 200000: {cos}")
    assert cos[1] > 0.995 and cos[1] > cos[0]


def test_not_separable_raises_clear_error():
    X = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(NotSeparableError, match="not linearly separable"):
        max_margin_separator(X)
    with pytest.raises(NotSeparableError, match=r"rows \[1\] are all-zero"):
        max_margin_separator(np.array([[1.0, 1.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="NaN"):
        max_margin_separator(np.array([[np.nan, 1.0]]))
