"""What the robustness experiment's stages share (rmgap.experiments.robustness): the two RM types, where
a (type, seed) cell lives, and the training settings of a cell."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from rmgap import flags

OBJECTIVES = ("ex_rm", "im_rm")
TARGET_HALF_WIDTH = 0.05  # the CI half-width the power model sizes pairs and seeds for


def cell_dir(out: Path, objective: str, seed: int) -> Path:
    return Path(out) / objective / f"seed{seed}"


def cell_config(args, preset: dict, objective: str, seed: int):
    cfg = flags.train_config(
        args,
        **preset["train"],
        objective=objective,
        max_part_length=preset["max_part_length"],
        eval_every_epoch=False,
    )
    return replace(cfg, seed=seed)
