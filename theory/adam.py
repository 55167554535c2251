"""One Adam step instead of one gradient step (theory/README.md §3, "Under Adam").

Adam's first update (torch.optim.Adam, bias-corrected, any β1, β2) from m₀ = v₀ = 0 is

    m̂₁ = g,  v̂₁ = g²   ⇒   Δθ = −η · g / (|g| + ε)   (elementwise; ≈ −η sign(g) where |g| ≫ ε)

so the first step is a fixed, nonlinear function of the gradient, and the reward change it causes is,
to first order in η, still linear in the step: Δr̄ = ⟨∇_θ r̄, Δθ⟩. With fixed states that is

    Δr_EX(x̄,ȳ) = ⟨h_{x̄,ȳ}, Δu⟩
    Δr_IM(x̄,ȳ) = β Σ_k ⟨e_{ȳ_k} − p_k, ΔW h̄_k⟩

(p_k, h̄_k as in theory.dynamics), with Δu = −η·adam_first_step(∇_u ℓ) and ΔW = −η·adam_first_step(∇_W ℓ).
Under gradient descent (Δ = −η∇ℓ) these are theory.dynamics' ρ formulas; under Adam the gradient's
magnitudes are flattened to ±1 per coordinate, so which responses move is decided by the signs of
∇ℓ's coordinates, not by their sizes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from theory.dynamics import TokenStates, softmax_rows


def adam_first_step(grad, eps: float = 1e-8):
    """The direction of Adam's first step per unit learning rate, g / (|g| + ε): Δθ = −η · this.
    ``grad``: a numpy array or a torch tensor (same type back); coordinates with g = 0 do not move."""
    return grad / (abs(grad) + eps)


def ex_reward_change_along(h_bar, delta_u) -> np.ndarray:
    """Δr_EX = ⟨h̄, Δu⟩ for a given step Δu of the head (D,); h_bar (N, D) → (N,)."""
    return np.asarray(h_bar, dtype=np.float64) @ np.asarray(delta_u, dtype=np.float64)


def im_reward_change_along(bars: Sequence[TokenStates], delta_W, *, beta: float) -> np.ndarray:
    """Δr_IM = β Σ_k ⟨e_{ȳ_k} − softmax(logits_k), ΔW h̄_k⟩ per evaluation response, the first-order
    change of β ln π(ȳ|x̄) along a given step ΔW (V, D) of the output matrix with the states fixed."""
    dW = np.asarray(delta_W, dtype=np.float64)
    out = np.empty(len(bars))
    for i, s in enumerate(bars):
        z = s.hidden.astype(np.float64) @ dW.T  # (K, V): ΔW h̄_k
        p = softmax_rows(s.logits)
        out[i] = beta * float((z[np.arange(s.n_tokens), s.tokens] - (p * z).sum(axis=1)).sum())
    return out
