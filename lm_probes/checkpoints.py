"""A training run's checkpoint: what ``checkpoint.pt`` holds, how a run resumes from it, and whether a
recorded configuration is this run's (lm_probes.train; the experiments' ``--resume`` and
``--explicit-from`` use ``same_config`` too).

The checkpoint holds the unwrapped model and head, so it resumes under any number of processes
(lm_probes.distributed); it is written after an epoch's training and before its evaluation, and
``history.json`` beside it records the evaluations that followed.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch


def same_config(recorded: dict, cfg) -> bool:
    """Whether a configuration recorded in a summary or checkpoint is ``cfg`` (a train.TrainConfig);
    options added to TrainConfig since it was recorded count at their defaults (so older runs stay
    resumable and reusable)."""
    as_json = lambda d: json.loads(json.dumps(d))  # noqa: E731 (tuples → lists, as recorded)
    return as_json({**asdict(type(cfg)()), **recorded}) == as_json(asdict(cfg))


def save_checkpoint(path: Path, rm, opt, history: list, epoch: int, train_loss: float) -> None:
    """Write ``path``: model, head, optimiser, reference tables, history, epoch, loss, configuration."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model": rm.model.state_dict(),
        "u": None if rm.u is None else rm.u.detach(),
        "optimizer": opt.state_dict(),
        "ref": rm.ref,
        "ref_eval": rm.ref_eval,
        "ref_eval_tokens": rm.ref_eval_tokens,
        "history": history,
        "epoch": epoch,
        "train_loss": train_loss,
        "config": asdict(rm.cfg),
    }
    torch.save(state, path)


def restore_checkpoint(path: Path, rm, opt) -> tuple[list, int, float | None]:
    """Load ``path`` into the reward model ``rm`` and optimiser ``opt`` → (history, last finished epoch,
    that epoch's training loss when its evaluation had not finished, else None). Refused when it was
    written with another configuration, except for a larger ``epochs``: with a constant learning rate
    and per-epoch seeds, continuing a finished run for more epochs is the longer run."""
    state = torch.load(path, weights_only=False, map_location=rm.lm.device)
    if (
        not same_config({**state["config"], "epochs": rm.cfg.epochs}, rm.cfg)
        or state["epoch"] > rm.cfg.epochs
    ):
        raise ValueError(f"{path} was written with a different configuration; refusing to resume")
    rm.model.load_state_dict(state["model"])
    if rm.u is not None:
        rm.u.data.copy_(state["u"])
    opt.load_state_dict(state["optimizer"])
    rm.ref, rm.ref_eval, rm.ref_eval_tokens = state["ref"], state["ref_eval"], state["ref_eval_tokens"]
    history, epoch = state["history"], state["epoch"]
    if (path.parent / "history.json").exists():  # the evaluations that followed the checkpoint
        saved = json.loads((path.parent / "history.json").read_text())
        history = [h for h in saved if h["epoch"] <= epoch]
    pending = state.get("train_loss") if not history or history[-1]["epoch"] < epoch else None
    return history, epoch, pending
