"""The probe under ProbeConfig(lora=...): its full column is a real peft LoRA step on a copy of the model,
and its first order over the adapters is theory.lora's closed form, the full-parameter first order along
ΔW = −η s² G AᵀA on the adapted matrices (computed without any adapter)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from lm_probes.probe.direction import first_order_moves, step_direction
from lm_probes.probe.one_step import ProbeConfig, run_probe
from lm_probes.rm.config import TrainConfig
from lm_probes.rm.lora import apply_lora, lora_layers, parse_lora
from tests.conftest import PROBE_EVALS, PROBE_TRAIN, make_tiny_lm, real_step
from theory import lora_weight_step

LR, SPEC = 1e-4, "4,8,q_proj+v_proj"


def _lora_copy(lm):
    """A copy of ``lm.model`` with the probe's adapters (A drawn as the probe draws it: head_seed 0)."""
    model = copy.deepcopy(lm.model)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        apply_lora(model, parse_lora(SPEC))
    return model


@pytest.fixture(scope="module")
def lora_probe():
    lm = make_tiny_lm()
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    res = run_probe(lm, PROBE_TRAIN, PROBE_EVALS, ProbeConfig(lr=LR, progress=False, lora=SPEC))
    after = lm.model.state_dict()  # the adapters are gone again and nothing moved
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert not lora_layers(lm.model) and all(p.requires_grad for p in lm.model.parameters())
    return lm, res


def _real_lora_step(lm, name: str) -> np.ndarray:
    return real_step(lm, name, torch.optim.SGD, LR, model=_lora_copy(lm))


@pytest.mark.parametrize("name", ["im_rm", "ex_rm"])
def test_full_column_is_a_real_lora_step(lora_probe, name):
    lm, res = lora_probe
    full = np.array([r[f"{name}_full"] for r in res["records"]])
    real = _real_lora_step(lm, name)
    np.testing.assert_allclose(full, real, rtol=1e-6, atol=1e-12 * np.abs(real).max())
    first = np.array([r[f"{name}_first_order"] for r in res["records"]])
    assert np.corrcoef(first, full)[0, 1] > 0.999
    assert res["summary"]["fixed_state_skipped"].startswith("LoRA")
    assert f"{name}_fixed_state" not in res["records"][0] and f"{name}_head_only" not in res["records"][0]


@pytest.mark.parametrize("name", ["im_rm", "ex_rm"])
def test_first_order_over_adapters_is_the_closed_form(lora_probe, name):
    lm, res = lora_probe
    d = step_direction(lm, TrainConfig(objective=name, beta=0.01), PROBE_TRAIN)  # −∇ℓ, no adapters
    spec, layers = parse_lora(SPEC), lora_layers(_lora_copy(lm))
    direction = {
        f"{owner}.weight": torch.tensor(
            lora_weight_step(-d.direction[f"{owner}.weight"].numpy(), m.lora_A["default"].weight.detach(),
                             spec.scaling, 1.0)
        )
        for owner, m in layers.items()
    }  # fmt: skip
    want = first_order_moves(lm, name, PROBE_EVALS, direction, d.head, d.head_direction,
                             ProbeConfig(lr=LR, progress=False))  # fmt: skip
    got = np.array([r[f"{name}_first_order"] for r in res["records"]])
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-14)
    if name == "im_rm":  # (and not the full-parameter first order: the adapters' step is another)
        full = first_order_moves(lm, name, PROBE_EVALS, d.direction, cfg=ProbeConfig(lr=LR, progress=False))
        assert not np.allclose(got, full, rtol=1e-2)


def test_a_bad_lora_spec_is_refused():
    with pytest.raises(ValueError, match="--lora"):
        ProbeConfig(lora="8")
    with pytest.raises(ValueError, match="output head or an embedding"):
        ProbeConfig(lora="8,16,lm_head")


def test_a_refused_target_leaves_the_probed_model_as_it_was():
    lm = make_tiny_lm()
    before = list(lm.model.state_dict())
    with pytest.raises(ValueError, match="--lora"):
        run_probe(
            lm, PROBE_TRAIN, PROBE_EVALS, ProbeConfig(lora="4,8,q_proj+input_layernorm", progress=False)
        )
    assert list(lm.model.state_dict()) == before and not lora_layers(lm.model)
