"""Does mixed precision change the rewards on your setting? (``rmgap train ... --precision-check``)

Found earlier with TRL (benchmarks/trl_bf16_check.py): bf16 autocast on an fp32 model changed the
logged reward margins 17× after one step, because the policy ran in bf16 while its reference
log-probs came from fp32. This check measures that on the user's model and data, at θ₀, before any
training: the rewards of the first ``n_pairs`` training pairs

- ``fp32``: everything in the model's own precision (an IM-RM's rewards are exactly 0 at θ₀);
- ``mixed_reference``: the policy under autocast, the reference in full precision (TRL's set-up);
- ``autocast``: policy and reference both under autocast (what ``--mixed-precision`` trains with:
  lm_probes.distributed runs the reference and the evaluation in the training precision);

and reports each one's mean |margin| and loss, and their differences from ``fp32``.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


@torch.no_grad()
def autocast_effect(lm, pairs, cfg, precision: str = "bf16", n_pairs: int = 16) -> dict:
    """lm: a LoadedLM; pairs: training Pairs; cfg: a lm_probes.rm.config.TrainConfig →
    {"fp32" | "mixed_reference" | "autocast": {"mean_abs_margin", "loss"},
    "max_abs_reward_change": {name: float}, "n_pairs"}."""
    from lm_probes.rm.reward_model import RewardModel
    from lm_probes.rm.trainer import encode_for_training

    if precision not in AUTOCAST:
        raise ValueError(f"precision must be one of {sorted(AUTOCAST)}, got {precision!r}")
    rt = cfg.check()  # the reward type, resolved once
    encs = encode_for_training(lm, pairs, cfg, rt).encodings[:n_pairs]
    if not encs:
        raise ValueError("no usable training pair to check (all dropped by the length rules)")
    flat = [e for pr in encs for e in pr]
    device_type = lm.device.type

    def auto():
        return torch.autocast(device_type=device_type, dtype=AUTOCAST[precision])

    out, rewards = {}, {}
    for name, ref_ctx, policy_ctx in (
        ("fp32", contextlib.nullcontext, contextlib.nullcontext),
        ("mixed_reference", contextlib.nullcontext, auto),
        ("autocast", auto, auto),
    ):
        rm = RewardModel(lm, cfg, rt=rt)
        with ref_ctx():
            rm.fill_reference(flat)
        with policy_ctx():
            r, sc, params = rm.rewards(flat, with_scored=True)
            loss = rm.rt.pair_loss(r, sc, params).mean()
        r = r.double().cpu().numpy()
        rewards[name] = r
        out[name] = {"mean_abs_margin": float(np.abs(r[0::2] - r[1::2]).mean()), "loss": float(loss)}
    out["max_abs_reward_change"] = {
        n: float(np.abs(rewards[n] - rewards["fp32"]).max()) for n in ("mixed_reference", "autocast")
    }
    out["n_pairs"] = len(encs)
    out["precision"] = precision
    return out
