"""theory.lora: the weight move of a first LoRA step, against a real torch optimiser step on B and A."""

import numpy as np
import pytest
import torch

from theory.lora import lora_weight_step


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_first_lora_step_is_the_closed_form(optimizer):
    rng = np.random.default_rng(0)
    out_dim, in_dim, r, alpha, lr = 6, 9, 3, 7.0, 1e-2
    s = alpha / r  # (≠ 1, so that a missing factor s shows)
    W0 = torch.tensor(rng.normal(size=(out_dim, in_dim)))
    x, target = torch.tensor(rng.normal(size=(5, in_dim))), torch.tensor(rng.normal(size=(5, out_dim)))
    loss_of = lambda W: (torch.tanh(x @ W.T) - target).pow(2).sum()  # noqa: E731

    W = W0.clone().requires_grad_(True)
    (G,) = torch.autograd.grad(loss_of(W), [W])  # ∂ℓ/∂W at W₀
    A = torch.tensor(rng.normal(size=(r, in_dim)), requires_grad=True)
    B = torch.zeros(out_dim, r, dtype=torch.float64, requires_grad=True)
    opt = (torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam)([A, B], lr=lr)
    A0 = A.detach().clone()
    loss_of(W0 + s * B @ A).backward()
    opt.step()
    moved = (s * B @ A).detach().numpy()  # ΔW = s·B₁A₁ − s·0·A₀
    want = lora_weight_step(G.numpy(), A0.numpy(), s, lr, optimizer)
    np.testing.assert_allclose(moved, want, rtol=1e-10, atol=1e-14)
    assert torch.equal(A.detach(), A0)  # ∂ℓ/∂A = s Bᵀ G = 0 at B = 0: A does not move, under either
    if optimizer == "sgd":  # −η s² G AᵀA: the full step times AᵀA (A's row space only)
        a = A0.numpy()
        np.testing.assert_allclose(want, -lr * s**2 * G.numpy() @ a.T @ a, rtol=1e-12)
        # with r = in and AᵀA = I/s² it is the full-parameter step
        q, _ = np.linalg.qr(rng.normal(size=(in_dim, in_dim)))
        full = lora_weight_step(G.numpy(), q / s, s, lr)
        np.testing.assert_allclose(full, -lr * G.numpy(), rtol=1e-10, atol=1e-14)


def test_an_unknown_optimiser_is_refused():
    with pytest.raises(ValueError, match="sgd or adam"):
        lora_weight_step(np.ones((2, 2)), np.ones((1, 2)), 1.0, 1e-3, "adamw")
