"""simulations/optimizers.py: Theorem 2's exact tie under momentum and Adam, broken by weight decay; the
numpy optimisers against torch's own."""

import json

import numpy as np
import pytest
import torch

from simulations import optimizers
from simulations.optimizers import Config, Optimiser


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("optimizers")
    return optimizers.main(["--quick", "--out-dir", str(out)]), out


def test_the_tie_survives_every_optimiser_without_weight_decay(quick):
    s, out = quick
    assert json.loads((out / "optimizers.json").read_text())["by_optimizer"] == s["by_optimizer"]
    for kind in ("gd", "momentum", "adam"):
        r = s["by_optimizer"][kind]
        assert r["im_unseen_rows_unchanged"] and r["im_unseen_tie_rate"] == 1.0
        assert r["im_unseen_max_abs_reward_gap"] == 0.0 and r["im_train_accuracy"] == 1.0


def test_decoupled_weight_decay_breaks_the_tie_and_reverses_the_reference(quick):
    s, _ = quick
    r = s["by_optimizer"]["adamw"]
    assert not r["im_unseen_rows_unchanged"] and r["im_unseen_tie_rate"] == 0.0
    assert r["reverse_of_reference"] == 1.0  # W_t − W0_t = c·W0_t, c < 0: every pair flips π_ref's order
    assert s["by_optimizer"]["adam_l2"]["im_unseen_tie_rate"] == 0.0


@pytest.mark.parametrize(
    ("kind", "make"),
    [
        ("gd", lambda p, c: torch.optim.SGD([p], lr=0.1)),
        ("momentum", lambda p, c: torch.optim.SGD([p], lr=0.1, momentum=c.momentum)),
        ("adam", lambda p, c: torch.optim.Adam([p], lr=0.1, betas=c.betas, eps=c.eps)),
        (
            "adamw",
            lambda p, c: torch.optim.AdamW(
                [p], lr=0.1, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay
            ),
        ),
        (
            "adam_l2",
            lambda p, c: torch.optim.Adam([p], lr=0.1, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay),
        ),
    ],
)
def test_each_optimiser_is_torchs(kind, make):
    cfg = Config(weight_decay=0.3)
    rng = np.random.default_rng(0)
    x0, grads = rng.normal(size=5), rng.normal(size=(6, 5))
    mine, theirs = x0.copy(), torch.tensor(x0, requires_grad=True)
    opt, ref = Optimiser(kind, 0.1, cfg, x0.shape), make(theirs, cfg)
    for g in grads:
        opt.step(mine, g.copy())
        theirs.grad = torch.tensor(g)
        ref.step()
    np.testing.assert_allclose(mine, theirs.detach().numpy(), rtol=1e-12, atol=1e-14)
