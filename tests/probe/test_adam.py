"""The probe under ProbeConfig(optimizer="adam") against a real torch.optim.Adam step on a copy of the
model: the full column is that step, first order and the fixed-state closed form predict it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lm_probes.probe.one_step import ProbeConfig, run_probe
from tests.conftest import PROBE_EVALS, PROBE_TRAIN, make_tiny_lm, real_step

LR = 1e-5


@pytest.fixture(scope="module")
def adam_probe():
    lm = make_tiny_lm()
    return lm, run_probe(lm, PROBE_TRAIN, PROBE_EVALS, ProbeConfig(lr=LR, progress=False, optimizer="adam"))


def _real_adam_step(lm, name: str, head_only: bool = False) -> np.ndarray:
    """Δr of every evaluation response after one torch.optim.Adam step on a copy of ``lm`` (with
    ``head_only``, of an untied output head alone)."""
    return real_step(lm, name, torch.optim.Adam, LR, head_only=head_only)


@pytest.mark.parametrize("name", ["im_rm", "ex_rm"])
def test_adam_columns_against_a_real_adam_step(adam_probe, name):
    lm, res = adam_probe
    observed = _real_adam_step(lm, name)
    full = np.array([r[f"{name}_full"] for r in res["records"]])
    np.testing.assert_allclose(full, observed, rtol=1e-6, atol=1e-12)
    first = np.array([r[f"{name}_first_order"] for r in res["records"]])
    assert np.corrcoef(first, observed)[0, 1] > 0.999
    fixed = np.array([r[f"{name}_fixed_state"] for r in res["records"]])
    head = np.array([r[f"{name}_head_only"] for r in res["records"]])
    assert np.corrcoef(fixed, head)[0, 1] > 0.9999
    np.testing.assert_allclose(fixed, head, rtol=1e-2, atol=1e-12)
    assert res["summary"]["config"]["optimizer"] == "adam"


def test_adam_head_only_is_a_real_adam_step_on_an_untied_head():
    lm = make_tiny_lm(tie=False)
    res = run_probe(lm, PROBE_TRAIN, PROBE_EVALS, ProbeConfig(lr=LR, progress=False, optimizer="adam"))
    head = np.array([r["im_rm_head_only"] for r in res["records"]])
    np.testing.assert_allclose(head, _real_adam_step(lm, "im_rm", head_only=True), rtol=1e-6, atol=1e-12)


def test_adam_moves_differ_from_sgd_moves(adam_probe):
    """The two optimisers' first steps are different steps: a probe that ignored the setting would
    give the SGD columns."""
    lm, res = adam_probe
    sgd = run_probe(lm, PROBE_TRAIN, PROBE_EVALS, ProbeConfig(lr=LR, progress=False))
    a = np.array([r["im_rm_full"] for r in res["records"]])
    b = np.array([r["im_rm_full"] for r in sgd["records"]])
    assert np.max(np.abs(a - b)) > 10 * np.max(np.abs(b))


def test_unknown_optimizer_is_refused():
    with pytest.raises(ValueError, match="optimizer must be one of"):
        ProbeConfig(optimizer="lion")
