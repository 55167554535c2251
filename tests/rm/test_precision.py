"""lm_probes.rm.precision and bf16 training: the mixed-reference effect, ties kept under autocast."""

from __future__ import annotations

import torch

from lm_probes.rm.config import TrainConfig
from lm_probes.rm.trainer import train_reward_model
from tests.conftest import EVAL, TRAIN, make_tiny_lm


def test_precision_check_shows_the_mixed_reference_effect():
    from lm_probes.rm.precision import autocast_effect

    res = autocast_effect(make_tiny_lm(dtype=torch.float32), TRAIN, TrainConfig(objective="im_rm"), "bf16")
    # an IM-RM at θ₀: exactly 0 in full precision and with policy and reference both under autocast ...
    assert res["fp32"]["mean_abs_margin"] == 0.0 and res["autocast"]["mean_abs_margin"] == 0.0
    # ... but not with a bf16 policy against an fp32 reference (TRL's set-up)
    assert (
        res["mixed_reference"]["mean_abs_margin"] > 0 and res["max_abs_reward_change"]["mixed_reference"] > 0
    )


def test_bf16_training_keeps_the_implicit_rewards_at_zero_before_training():
    from accelerate.state import AcceleratorState

    from lm_probes.distributed import Runtime

    cfg = TrainConfig(objective="im_rm", epochs=1, lr=1e-2, batch_size=4, micro_batch=2, progress=False)
    AcceleratorState._reset_state(True)  # (accelerate's process-wide state: fresh, and reset after)
    try:
        rt = Runtime.from_env("bf16", cpu=True)
        res = train_reward_model(make_tiny_lm(dtype=torch.float32), TRAIN, EVAL, cfg, runtime=rt).summary
    finally:
        AcceleratorState._reset_state(True)
    # reference and evaluation run in the training precision: every IM reward is 0 at θ₀
    assert (
        res["history"][0]["orig"]["rewards/margins"] == 0.0
        and res["history"][0]["orig"]["rewards/chosen"] == 0.0
    )
    assert res["history"][1]["orig"]["rewards/margins"] != 0.0  # and training moved them
