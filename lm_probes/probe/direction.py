"""The direction of one gradient step of a reward model's own loss at θ₀, on training pairs: what
``first_order_moves`` (below: the probe's exact first order, lm_probes.probe.one_step) projects every
evaluation response onto.

    d = step_direction(lm, cfg, pairs)                          # cfg: lm_probes.rm.config.TrainConfig
    moves = first_order_moves(lm, cfg.objective, evals, d.direction, d.head, d.head_direction, probe_cfg)

The loss is the mean over ``pairs`` of the reward type's pair loss (plus the mitigations' penalty and,
with ``rewrites``, their consistency term), under the type's trainable parameters; token dropout enters
in expectation (at θ₀ every mask gives the same reward, so the expected gradient is the undropped one).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from lm_probes.data.pairs import Pair, encode_pairs
from lm_probes.lm.loading import LoadedLM
from lm_probes.probe.one_step import ProbeConfig, _Run
from lm_probes.rm.config import TrainConfig
from lm_probes.rm.reward_model import RewardModel
from lm_probes.rm.rewards import get_reward_type


@dataclass
class StepDirection:
    direction: dict[str, torch.Tensor]  # −∇ℓ, named as in lm.model.named_parameters()
    head: torch.Tensor | None  # u at θ₀ (explicit types)
    head_direction: torch.Tensor | None  # −∇_u ℓ
    n_pairs: int


def step_direction(lm, cfg: TrainConfig, pairs: list[Pair], rewrites: bool = False) -> StepDirection:
    """−∇ℓ at θ₀ for ``pairs`` under ``cfg`` (its reward type, options, freezing; RewardModel applies
    them to ``lm``); ``rewrites``: each pair's ``Pair.rewrite`` enters the consistency term."""
    cfg = replace(cfg, progress=False)
    with torch.random.fork_rng():  # (LoRA's A drawn as the trainer draws it for this seed)
        torch.manual_seed(cfg.seed)
        rm = RewardModel(lm, cfg, rt=cfg.check())

    def encode(ps):
        return encode_pairs(lm.tokenizer, ps, chat_template=cfg.chat_template, too_long="raise")

    enc = encode(pairs)
    encs, rw = enc.encodings, None
    if rewrites and cfg.consistency:
        rw = [encode([Pair(p.prompt, *p.rewrite)]).encodings[0] for p in enc.kept]
    rm.fill_reference([e for pr in [*encs, *(rw or [])] for e in pr])
    params = rm.trainable()
    loss = rm.batch_loss(encs, rw) / len(encs) + rm.step_penalty()
    grads = dict(zip(map(id, params), torch.autograd.grad(loss, params), strict=True))
    direction = {n: -grads[id(p)] for n, p in lm.model.named_parameters() if id(p) in grads}
    head = None if rm.u is None else rm.u.detach()
    head_dir = None if rm.u is None else -grads[id(rm.u)]
    return StepDirection(direction, head, head_dir, len(encs))


def first_order_moves(
    lm: LoadedLM,
    reward: str,
    evals: list[Pair],
    direction: dict[str, torch.Tensor],
    head: torch.Tensor | None = None,
    head_direction: torch.Tensor | None = None,
    cfg: ProbeConfig | None = None,
) -> np.ndarray:
    """η·⟨∇_θ r̄, v⟩ for every evaluation response (chosen, rejected interleaved; pairs with identical
    responses left out) under reward type ``reward``, for a given direction v: tensors named as in
    ``lm.model.named_parameters()`` (names left out: 0) and, for a type with a head, ``head_direction``
    at ``head``. The same exact forward-mode JVP as the probe's first_order column, along any update
    (a mitigation's one-step direction: rmgap.experiments.mitigations)."""
    rt = get_reward_type(reward)
    run = _Run(lm, cfg or ProbeConfig(), [], evals)
    named = dict(lm.model.named_parameters())
    unknown = set(direction) - set(named)
    if unknown:
        raise ValueError(f"direction names parameters the model does not have: {sorted(unknown)[:3]}")
    tangents = {n: direction[n] if n in direction else torch.zeros_like(p) for n, p in named.items()}
    requires_grad = [p.requires_grad for p in named.values()]
    try:
        for p in named.values():
            p.requires_grad_(False)
        return run.first_order(rt, tangents, head, head_direction)
    finally:
        for p, flag in zip(named.values(), requires_grad, strict=True):
            p.requires_grad_(flag)
