"""theory.rewards: definitions, numerical stability, ties and the normalised margin."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from theory import accuracy, bt_grad_scale, bt_loss, ex_reward, im_reward

finite = st.floats(-1e3, 1e3, allow_nan=False)


def test_ex_and_im_reward():
    u = np.array([1.0, -2.0])
    h = np.array([[3.0, 1.0], [0.0, 0.5]])
    np.testing.assert_array_equal(ex_reward(u, h), [1.0, -1.0])
    np.testing.assert_allclose(im_reward([-3.0, -1.0], [-2.0, -1.5], beta=0.01), [-0.01, 0.005])
    with pytest.raises(ValueError, match="beta"):
        im_reward(0.0, 0.0, beta=0.0)
    with pytest.raises(ValueError, match=r"u must be \(D,\)"):
        ex_reward(u, np.ones((2, 3)))


@given(arrays(np.float64, 8, elements=finite), arrays(np.float64, 8, elements=finite))
def test_bt_loss_matches_torch_logsigmoid_and_is_finite(rc, rr):
    want = -torch.nn.functional.logsigmoid(torch.as_tensor(rc - rr)).numpy()
    got = bt_loss(rc, rr, reduction="none")
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-300)
    assert np.isclose(bt_loss(rc, rr), want.mean(), rtol=1e-12)


def test_bt_grad_scale_is_minus_loss_derivative():
    rc = torch.tensor([0.3, 5.0, -40.0], dtype=torch.float64, requires_grad=True)
    rr = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    (-torch.nn.functional.logsigmoid(rc - rr)).sum().backward()
    np.testing.assert_allclose(bt_grad_scale(rc.detach(), rr), -rc.grad.numpy(), rtol=1e-12)


def test_accuracy_counts_ties_and_normalises_margin():
    rc = np.array([1.0, 2.0, 0.0, 0.0])
    rr = np.array([0.0, 3.0, 0.0, 0.0])
    acc = accuracy(rc, rr)
    assert (acc.strict, acc.tie_rate, acc.half_ties, acc.n) == (0.25, 0.5, 0.5, 4)
    all_r = np.r_[rc, rr]
    assert np.isclose(acc.normalized_abs_margin, np.mean(np.abs(rc - rr)) / all_r.std(ddof=1))
    # a tolerance turns near-ties into ties
    assert accuracy([1e-12], [0.0], atol=1e-9).tie_rate == 1.0
    assert accuracy([1e-12], [0.0]).strict == 1.0


def test_untrained_im_rm_is_at_chance_with_half_ties():
    zeros = np.zeros(10)
    acc = accuracy(zeros, zeros)
    assert acc.strict == 0.0 and acc.tie_rate == 1.0 and acc.half_ties == 0.5


@pytest.mark.parametrize("bad", [([1.0, np.nan], [0.0, 0.0]), ([1.0], [0.0, 1.0]), ([], [])])
def test_accuracy_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        accuracy(*bad)
