"""One LoRA step instead of a full-parameter step (theory/README.md §3, "Under LoRA").

LoRA adapts a weight matrix W₀ (out × in) as W = W₀ + s·B·A, with A (r × in) drawn at random, B (out × r)
zero at the start and s = α/r. At B = 0 the loss's gradients are

    ∂ℓ/∂B = s · G Aᵀ,   ∂ℓ/∂A = s · Bᵀ G = 0,      G = ∂ℓ/∂W at W₀,

so the first step moves B alone, and the weight moves by ΔW = s · ΔB · A:

    gradient descent:  ΔW = −η s² · G AᵀA          (the full step −ηG, times AᵀA: A's row space only)
    Adam:              ΔW = −η s · adam(s G Aᵀ) A  (adam(g) = g / (|g| + ε), theory.adam)

To first order the reward change of any response is ⟨∇_W r̄, ΔW⟩ summed over the adapted matrices,
the full-parameter first order along this step. What it means for the IM-RM: LoRA on the attention
(or any body) matrices leaves the unembedding W fixed, so §3's fixed-state IM term (ρ coefficients
times state inner products, which needs ΔW of the head) is exactly 0; the IM-RM's reward moves only
through the hidden states, Δr_IM = β Σ_k ⟨Wᵀ(e_{ȳ_k} − p_k), Δh̄_k⟩, and reads each state's move
through the token-identity vector Wᵀ(e_{ȳ_k} − p_k), the EX-RM through its head u.
"""

from __future__ import annotations

import numpy as np

from theory.adam import adam_first_step


def lora_weight_step(
    grad_W, A, scaling: float, lr: float, optimizer: str = "sgd", eps: float = 1e-8
) -> np.ndarray:
    """ΔW (out, in) of the first LoRA step from B = 0 on one matrix: grad_W (out, in) = ∂ℓ/∂W at W₀,
    A (r, in), scaling = α/r, lr = η; optimizer "sgd" (−η s² G AᵀA) or "adam" (−η s·adam(s G Aᵀ)·A)."""
    G, A = np.asarray(grad_W, dtype=np.float64), np.asarray(A, dtype=np.float64)
    grad_B = scaling * G @ A.T  # (out, r)
    if optimizer == "sgd":
        step_B = grad_B
    elif optimizer == "adam":
        step_B = adam_first_step(grad_B, eps)
    else:
        raise ValueError(f"optimizer must be sgd or adam, got {optimizer!r}")
    return -lr * scaling * step_B @ A
