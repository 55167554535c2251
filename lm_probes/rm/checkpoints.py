"""A training run's checkpoint: what ``checkpoint.pt`` holds, how a run resumes from it, and whether a
recorded configuration is this run's (lm_probes.rm.trainer; the experiments' ``--resume`` and
``--explicit-from`` use ``same_config`` too).

The checkpoint holds the unwrapped model and head (a fully sharded one gathered to full tensors),
so it resumes under any number of processes and back end (lm_probes.distributed); it is written
after an epoch's training and before its evaluation, and ``history.json`` beside it records the
evaluations that followed.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch


def same_config(recorded: dict, cfg) -> bool:
    """Whether a configuration recorded in a summary or checkpoint is ``cfg`` (a train.TrainConfig);
    options added to TrainConfig since it was recorded count at their defaults (so older runs stay
    resumable and reusable); display options (progress bars) do not count. (Tuples and lists compare
    equal, as JSON records them.)"""
    as_json = lambda d: json.loads(json.dumps({k: v for k, v in d.items() if k not in DISPLAY}))  # noqa: E731
    return as_json({**asdict(type(cfg)()), **recorded}) == as_json(asdict(cfg))


DISPLAY = ("progress",)  # options that change what is printed, not what is computed


def save_checkpoint(path: Path, rm, opt, history: list, epoch: int, train_loss: float, write=True) -> None:
    """Write ``path``: model, head, optimiser, reference tables, history, epoch, loss, configuration.
    A fully sharded ``rm`` is gathered to full tensors first, which every process takes part in; only a
    process with ``write`` writes."""
    model, u, optimizer = full_state(rm, opt)
    if not write:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model": model,
        "u": u,
        "optimizer": optimizer,
        "ref": rm.ref,
        "ref_eval": rm.ref_eval,
        "ref_eval_tokens": rm.ref_eval_tokens,
        "history": history,
        "epoch": epoch,
        "train_loss": train_loss,
        "config": asdict(rm.cfg),
    }
    torch.save(state, path)


def full_state(rm, opt) -> tuple[dict, torch.Tensor | None, dict]:
    """(the LM's state dict, u, the optimiser's state dict) as one plain process holds them. For a
    module sharded by FSDP2 (lm_probes.distributed) they are gathered (a collective: every process
    calls) onto the main process, the others get empty ones; the optimiser's state, keyed there by
    parameter name, is keyed by position as a plain optimiser keys it."""
    if not hasattr(rm, "unshard"):
        return rm.model.state_dict(), (None if rm.u is None else rm.u.detach()), opt.state_dict()
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd, osd = get_model_state_dict(rm, options=options), get_optimizer_state_dict(rm, opt, options=options)
    model = {k.removeprefix("model."): v for k, v in msd.items() if k.startswith("model.")}
    index = {n: i for i, n in enumerate(_names(rm, opt))}
    groups = osd.get("param_groups", ())  # (empty on the processes that do not write)
    optimizer = {
        "state": {index[n]: v for n, v in osd.get("state", {}).items()},
        "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in groups],
    }
    return model, msd.get("u"), optimizer


def _names(rm, opt) -> list[str]:
    """The optimiser's parameters' names in ``rm``, in its order."""
    names = {id(p): n for n, p in rm.named_parameters()}
    return [names[id(p)] for g in opt.param_groups for p in g["params"]]


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
    if hasattr(rm, "unshard"):  # sharded by FSDP2: each process keeps its shards of the full tensors
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True)
        full = {f"model.{k}": v for k, v in state["model"].items()}
        if rm.u is not None:
            full["u"] = state["u"]
        set_model_state_dict(rm, full, options=options)
        names, o = _names(rm, opt), state["optimizer"]
        named = {
            "state": {names[i]: v for i, v in o["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in o["param_groups"]],
        }
        set_optimizer_state_dict(rm, opt, named, options=options)
    else:
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
