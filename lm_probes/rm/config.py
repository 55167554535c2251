"""What a reward model is trained with: one frozen dataclass beside the trainer (lm_probes.rm.trainer),
as TRL keeps its DPOConfig beside its DPOTrainer.

    cfg = TrainConfig(objective="im_rm", epochs=2, lr=1e-6)     # objective: a reward type of the registry
    rt = cfg.check()                                             # refuses what cannot apply; → RewardType

The mitigations' options (lm_probes.rm.mitigations) are fields here too: token dropout, the rewrite-
consistency weight, what stays frozen (FREEZE), the L2 pull of the output head; and LoRA adapters
(``lora``, lm_probes.rm.lora).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from lm_probes.rm.lora import parse_lora
from lm_probes.rm.rewards import RewardType, get_reward_type

FREEZE = ("unembedding", "representations")  # what TrainConfig.freeze may hold


@dataclass(frozen=True)
class TrainConfig:
    objective: str = "im_rm"
    epochs: int = 1
    lr: float = 1e-6
    beta: float = 0.01
    batch_size: int = 32  # pairs per optimiser step (effective batch)
    micro_batch: int = 8  # pairs per forward/backward
    seed: int = 0
    head_seed: int | None = None  # seed of the EX head's initial value (default: seed)
    chat_template: bool = True
    max_length: int | None = None  # default: the model's context
    max_part_length: int | None = None  # drop pairs whose prompt or a response is longer (paper: 512)
    eval_every_epoch: bool = True  # False: evaluate once, after the last epoch
    token_rewards: bool = False  # keep the per-token split of the final rewards (types that have one)
    progress: bool = True
    # mitigations (lm_probes.rm.mitigations): drop each per-token reward term with this probability
    # (rescaled; training only), the rewrite-consistency weight λ, what stays fixed, the L2 pull λ of
    # the output head toward its initial value
    token_dropout: float = 0.0
    consistency: float = 0.0
    freeze: str | None = None
    unembedding_l2: float = 0.0
    # LoRA (lm_probes.rm.lora): "r,alpha,targets"; adapters train, the base weights stay frozen
    lora: str | None = None

    def check(self, sharded: bool = False) -> RewardType:
        """The reward type ``objective`` names, after refusing options that cannot apply (a ValueError
        naming the option); ``sharded``: under a fully sharded back end (lm_probes.distributed). A run
        resolves its reward type here, once, and hands it on."""
        rt = get_reward_type(self.objective)
        check_settings(self)
        if self.batch_size % self.micro_batch:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of micro_batch ({self.micro_batch})"
            )
        if not 0.0 <= self.token_dropout < 1.0:
            raise ValueError(f"token_dropout must be in [0, 1), got {self.token_dropout}")
        if self.token_dropout and rt.token_rewards is None:
            raise ValueError(f"token_dropout needs a reward that is a sum over tokens; {rt.name} is not")
        if self.consistency < 0 or self.unembedding_l2 < 0:
            raise ValueError("consistency and unembedding_l2 must be ≥ 0")
        if self.freeze not in (None, *FREEZE):
            raise ValueError(f"freeze must be one of {', '.join(FREEZE)}, got {self.freeze!r}")
        if sharded and self.unembedding_l2:
            raise ValueError("unembedding_l2 (the L2 pull of the head) is not run under a sharded back end")
        if self.lora is not None:
            parse_lora(self.lora)
            if self.freeze or self.unembedding_l2:
                raise ValueError("--lora freezes the base weights itself: no freeze or unembedding_l2")
            if sharded:
                raise ValueError("--lora is not run under a fully sharded back end (FSDP); use DDP")
        return rt


# field → (lowest, highest, lowest allowed itself?): None = no bound; what every numeric setting must satisfy
RANGES = {
    "epochs": (0, None, True),  # (0: evaluate θ₀ only, a library use; the commands ask for ≥ 1)
    "lr": (0.0, 1.0, False),
    "beta": (0.0, 1e3, False),
    "batch_size": (1, None, True),
    "micro_batch": (1, None, True),
    "seed": (0, None, True),
    "head_seed": (0, None, True),
    "max_length": (1, None, True),
    "max_part_length": (1, None, True),
}


def check_settings(cfg) -> None:
    """Refuse a numeric setting out of its range (RANGES) or not finite, in one line naming the field
    and its flag, before any work."""
    for f in fields(cfg):
        if f.name not in RANGES or getattr(cfg, f.name) is None:
            continue
        v, (lo, hi, closed) = getattr(cfg, f.name), RANGES[f.name]
        ints = isinstance(lo, int) and not isinstance(lo, bool)
        bad = (ints and (not isinstance(v, int) or isinstance(v, bool))) or not math.isfinite(v)
        bad = bad or (v < lo if closed else v <= lo) or (hi is not None and v > hi)
        if bad:
            where = f"{f.name} (--{f.name.replace('_', '-')})"
            rng = f"{'≥' if closed else '>'} {lo}" + (f" and ≤ {hi:g}" if hi is not None else "")
            kind = "an integer" if ints else "a finite number"
            raise ValueError(f"{where} must be {kind} {rng}, got {v!r}")
