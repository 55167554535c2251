"""theory.adam: Adam's first step against torch.optim.Adam, and the reward change along a given step
against the ρ formulas (gradient descent) and against autograd (any step, Adam's included)."""

import numpy as np
import pytest
import torch

from theory import TokenStates, ex_reward_change, im_reward_change, log_prob_grad_W
from theory.adam import adam_first_step, ex_reward_change_along, im_reward_change_along


@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.5, 0.9)])
def test_first_step_is_torchs_adam(betas):
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=50)
    g = rng.normal(size=50) * np.logspace(-12, 2, 50)  # magnitudes around ε and far above it
    g[3] = 0.0
    p = torch.tensor(x0, requires_grad=True)
    opt = torch.optim.Adam([p], lr=1e-3, betas=betas, eps=1e-8)
    p.grad = torch.tensor(g)
    opt.step()
    np.testing.assert_allclose(
        p.detach().numpy() - x0, -1e-3 * adam_first_step(g, 1e-8), rtol=1e-9, atol=1e-15
    )
    assert adam_first_step(g)[3] == 0.0 and np.abs(adam_first_step(g)[-1]) == pytest.approx(1.0)
    assert torch.equal(adam_first_step(torch.tensor(g)), torch.tensor(adam_first_step(g)))


def _states(rng, K, V, D):
    return TokenStates(rng.integers(0, V, K), rng.normal(size=(K, D)), rng.normal(size=(K, V)))


def test_along_minus_the_gradient_is_the_rho_formula():
    rng = np.random.default_rng(1)
    V, D, beta, lr, g = 30, 8, 0.5, 1e-3, 0.7
    bar, plus, minus = _states(rng, 4, V, D), _states(rng, 3, V, D), _states(rng, 5, V, D)
    # ∇_W ℓ = −g β (∇_W ln π(y+) − ∇_W ln π(y−)) for ℓ = −ln σ(r+ − r−)
    grad = -g * beta * (log_prob_grad_W(*vars(plus).values()) - log_prob_grad_W(*vars(minus).values()))
    got = im_reward_change_along([bar], -lr * grad, beta=beta)[0]
    assert got == pytest.approx(im_reward_change(bar, plus, minus, beta=beta, lr=lr, g=g), rel=1e-10)
    h_bar, hp, hm = rng.normal(size=(6, D)), rng.normal(size=D), rng.normal(size=D)
    np.testing.assert_allclose(
        ex_reward_change_along(h_bar, lr * g * (hp - hm)), ex_reward_change(h_bar, hp, hm, lr=lr, g=g)
    )


def test_along_an_adam_step_is_the_directional_derivative():
    rng = np.random.default_rng(2)
    V, D, beta = 20, 6, 0.3
    hidden, tokens = rng.normal(size=(4, D)), rng.integers(0, V, 4)
    W = torch.tensor(rng.normal(size=(V, D)), requires_grad=True)
    step = torch.tensor(-1e-3 * adam_first_step(rng.normal(size=(V, D))))

    def r(w):
        lp = torch.log_softmax(torch.tensor(hidden) @ w.T, -1)
        return beta * lp[torch.arange(4), torch.tensor(tokens)].sum()

    _, want = torch.func.jvp(r, (W.detach(),), (step,))
    s = TokenStates(tokens, hidden, (torch.tensor(hidden) @ W.detach().T).numpy())
    assert im_reward_change_along([s], step.numpy(), beta=beta)[0] == pytest.approx(want.item(), rel=1e-10)
