"""A training run's checkpoint: what ``checkpoint.pt`` holds, how a run resumes from it, and whether a
recorded configuration is this run's (lm_probes.rm.trainer; the experiments' ``--resume`` and
``--explicit-from`` use ``same_config`` too).

The checkpoint holds the unwrapped model and head (a fully sharded one gathered to full tensors; under
LoRA, the adapters alone, the base weights being the run's initial ones, checked by its digest),
so it resumes under any number of processes and back end (lm_probes.distributed); it is written
after an epoch's training and before its evaluation, and ``history.json`` beside it records the
evaluations that followed (a resume runs an evaluation the checkpoint's epoch is still owed).

Every file is written atomically (a temporary file beside it, flushed to disk, renamed over it): a run
killed mid-write, or a full disk, leaves the previous checkpoint whole. A checkpoint carries the SHA-256
of its own contents (``digest``), checked whenever it is read, and ``run``: the digests of the run's
encoded training data, every evaluation set and the model's initial weights, and the mixed precision;
a resume refuses, in one line, a checkpoint whose ``run`` differs from its own. (Checkpoints written
before digests, December 2026, have neither and are read unchecked.)
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from lm_probes.rm.lora import adapter_state


def same_config(recorded: dict, cfg) -> bool:
    """Whether a configuration recorded in a summary or checkpoint is ``cfg`` (a train.TrainConfig);
    options added to TrainConfig since it was recorded count at their defaults (so older runs stay
    resumable and reusable); display options (progress bars) do not count. (Tuples and lists compare
    equal, as JSON records them.)"""
    as_json = lambda d: json.loads(json.dumps({k: v for k, v in d.items() if k not in DISPLAY}))  # noqa: E731
    return as_json({**asdict(type(cfg)()), **recorded}) == as_json(asdict(cfg))


DISPLAY = ("progress",)  # options that change what is printed, not what is computed


def check_finished(summary: Path, cfg) -> None:
    """Refuse, in one line, to count a finished run (its ``summary.json``) trained with another
    configuration than ``cfg`` (another --lr, --epochs, --lora, ...) as this one."""
    recorded = json.loads(Path(summary).read_text()).get("config", {})
    if not same_config(recorded, cfg):
        was = json.loads(json.dumps({**asdict(type(cfg)()), **recorded}))
        now = json.loads(json.dumps(asdict(cfg)))
        diff = sorted(k for k in now if k not in DISPLAY and was.get(k) != now[k])
        raise ValueError(
            f"{Path(summary).parent}: finished with another {', '.join(diff)}; refusing to resume"
        )


def digest(obj) -> str:
    """SHA-256 of a nest of dicts, lists, tensors, arrays and plain values: tensors by dtype, shape and
    bytes; dicts in their order (a checkpoint's contents, an encoded data set, a model's weights)."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h, x) -> None:
    if isinstance(x, dict):
        h.update(b"{%d" % len(x))
        for k, v in x.items():
            _feed(h, k)
            _feed(h, v)
    elif isinstance(x, (list, tuple)):
        h.update(b"[%d" % len(x))
        for v in x:
            _feed(h, v)
    elif isinstance(x, torch.Tensor):
        t = x.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    elif isinstance(x, np.ndarray):
        h.update(f"A{x.dtype}{x.shape}".encode())
        h.update(memoryview(np.ascontiguousarray(x)).cast("B"))
    else:
        h.update(repr(x).encode())


def weights_digest(module) -> str:
    """SHA-256 of a module's parameters and buffers (its state dict), by name."""
    return digest(dict(module.state_dict()))


def save_atomic(obj, path: Path) -> Path:
    """``torch.save`` into a temporary file beside ``path``, flushed to disk, renamed over it: a kill or
    a full disk mid-write leaves the previous file whole (a full disk: one line naming the file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # (a full disk surfaces from torch's writer as RuntimeError)
        why = "the disk is full" if "No space" in str(e) or getattr(e, "errno", None) == 28 else e
        raise OSError(f"{path}: could not be written ({why}); the previous file is kept") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_file(path: Path, map_location=None):
    """``torch.load`` of a file this project wrote; a missing, truncated or foreign file is one line
    naming it."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        return torch.load(path, weights_only=False, map_location=map_location)
    except Exception as e:  # (truncated: RuntimeError/EOFError; text: UnpicklingError; …)
        why = " ".join(str(e).split())[:120] or type(e).__name__
        raise ValueError(f"{path}: not a readable checkpoint (truncated or corrupt: {why})") from None


def read_checkpoint(path: Path, map_location=None) -> dict:
    """A checkpoint's contents, its digest checked (refused in one line where it differs: corrupt)."""
    state = load_file(path, map_location)
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise ValueError(f"{path}: not a training checkpoint")
    if "digest" in state and digest({k: v for k, v in state.items() if k != "digest"}) != state["digest"]:
        raise ValueError(f"{path}: its contents do not match its digest (corrupt); refusing to use it")
    return state


def check_run(path: Path, state: dict, run: dict) -> None:
    """Refuse, in one line, a checkpoint written by another run: other training data, evaluation sets,
    initial weights or mixed precision than ``run`` (what save_checkpoint records)."""
    was = state.get("run")
    if was is None:  # (written before checkpoints recorded their run)
        return
    names = {"train": "the training data", "model": "the model's initial weights", "mixed_precision": ""}
    what = [
        names[k] or f"--mixed-precision ({was.get(k)} → {run.get(k)})"
        for k in names
        if was.get(k) != run.get(k)
    ]
    before, now = was.get("eval", {}), run.get("eval", {})
    sets = sorted(n for n in {*before, *now} if before.get(n) != now.get(n))
    if sets:
        what.append(f"evaluation set(s) {', '.join(sets)}")
    if what:
        raise ValueError(f"{path}: written by another run (differs in {'; '.join(what)}); refusing to resume")


def save_checkpoint(
    path: Path, rm, opt, history: list, epoch: int, train_loss: float, write=True, run: dict | None = None
) -> None:
    """Write ``path`` atomically: model, head, optimiser, reference tables, history, epoch, loss,
    configuration, ``run`` (check_run) and the digest of it all. A fully sharded ``rm`` is gathered to
    full tensors first, which every process takes part in; only a process with ``write`` writes."""
    model, u, optimizer = full_state(rm, opt)
    if not write:
        return
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
        "run": run,
    }
    state["digest"] = digest(state)
    save_atomic(state, path)


def full_state(rm, opt) -> tuple[dict, torch.Tensor | None, dict]:
    """(the LM's state dict, u, the optimiser's state dict) as one plain process holds them. For a
    module sharded by FSDP2 (lm_probes.distributed) they are gathered (a collective: every process
    calls) onto the main process, the others get empty ones; the optimiser's state, keyed there by
    parameter name, is keyed by position as a plain optimiser keys it."""
    if not hasattr(rm, "unshard"):  # (LoRA: the adapters alone; the base weights are the run's θ0)
        model = adapter_state(rm.model) if rm.cfg.lora else rm.model.state_dict()
        return model, (None if rm.u is None else rm.u.detach()), opt.state_dict()
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


def restore_checkpoint(path: Path, rm, opt, run: dict | None = None) -> tuple[list, int, float | None]:
    """Load ``path`` into the reward model ``rm`` and optimiser ``opt`` → (history, last finished epoch,
    that epoch's training loss when its evaluation had not finished, else None). Refused when it is
    corrupt, was written by another ``run`` (check_run) or with another configuration, except for a
    larger ``epochs``: with a constant learning rate and per-epoch seeds, continuing a finished run for
    more epochs is the longer run."""
    state = read_checkpoint(path, map_location=rm.lm.device)
    if run is not None:
        check_run(path, state, run)
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
        load_weights(path, rm, state)
        opt.load_state_dict(state["optimizer"])
    rm.ref, rm.ref_eval, rm.ref_eval_tokens = state["ref"], state["ref_eval"], state["ref_eval_tokens"]
    history, epoch = state["history"], state["epoch"]
    if (path.parent / "history.json").exists():  # the evaluations that followed the checkpoint
        try:
            saved = json.loads((path.parent / "history.json").read_text())
            history = [h for h in saved if h["epoch"] <= epoch]
        except (ValueError, TypeError, KeyError):
            raise ValueError(f"{path.parent / 'history.json'}: not this run's history (unreadable)") from None
    pending = state.get("train_loss") if not history or history[-1]["epoch"] < epoch else None
    return history, epoch, pending


def load_weights(path: Path, rm, state: dict) -> None:
    """A checkpoint's LM weights and head into ``rm`` (one plain process); another architecture or shape
    is one line."""
    try:
        if rm.cfg.lora:  # the adapters alone, every one of them (the base weights are θ0's)
            want = set(adapter_state(rm.model))
            if set(state["model"]) != want:
                raise KeyError(f"adapters {sorted(want ^ set(state['model']))[:2]} differ")
            rm.model.load_state_dict(state["model"], strict=False)
        else:
            rm.model.load_state_dict(state["model"])
        if rm.u is not None:
            rm.u.data.copy_(state["u"])
    except (RuntimeError, KeyError, TypeError) as e:
        why = " ".join(str(e).split())[:160]
        raise ValueError(f"{path}: written for another model ({why}); refusing to load it") from None
