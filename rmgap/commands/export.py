"""``rmgap export RUN --out DIR``: a finished training folder saved in the Hugging Face format
(lm_probes.rm.export), as ``rmgap train --export`` saves it at the end of a run. RUN is any folder
with a ``summary.json`` and a ``checkpoint.pt``: an ``rmgap train --out`` folder or one RM's cell of
an experiment (persona, shifts, robustness, hamiltonian; ``rmgap mitigations`` deletes its
checkpoints). The base model is the one the run was trained from, checked by its file's SHA-256
where it has one and by the digest of the run's initial weights (``summary.json`` → ``digests.model``;
a LoRA run's adapters at their start included) where the dtypes match.

    rmgap export runs/shifts/im_rm --out hf/im_rm            # a SmolLM2 run: --model defaults to it
    rmgap export runs/mine/ex_rm --model BASE --out hf/ex_rm  # a run on another base model
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from lm_probes.rm.config import TrainConfig
from rmgap import flags


def _parser():
    ap = flags.parser("rmgap export", __doc__)
    ap.add_argument("run", type=Path, help="a finished training folder (summary.json, checkpoint.pt)")
    ap.add_argument("--out", type=Path, required=True, help="the export folder (new or empty)")
    flags.add_model_args(ap)
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return ap


def run_config(run: Path) -> tuple[dict, TrainConfig]:
    """(summary, TrainConfig) of a finished training folder; a folder that is not one is refused."""
    path = run / "summary.json"
    if not path.is_file():
        raise ValueError(f"{run}: not a finished training folder (no summary.json)")
    if not (run / "checkpoint.pt").is_file():
        raise ValueError(f"{run}: no checkpoint.pt to export (rmgap mitigations deletes its checkpoints)")
    try:
        summary = json.loads(path.read_text())
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        cfg = TrainConfig(**{k: v for k, v in summary["config"].items() if k in known})
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not an rmgap training summary ({exc})") from None
    return summary, cfg


def same_start(summary: dict, cfg: TrainConfig, lm) -> bool:
    """Whether ``lm`` is the model the run started from: the digest of its weights (with a LoRA run's
    adapters at their start, A drawn as the trainer drew it) against the run's ``digests.model``. True
    where the run recorded none or was trained in another dtype (nothing to compare)."""
    import torch

    from lm_probes.rm.checkpoints import weights_digest
    from lm_probes.rm.lora import apply_lora, parse_lora

    want = (summary.get("digests") or {}).get("model")
    if not want or (summary.get("model") or {}).get("dtype") != lm.info.get("dtype"):
        return True
    if not cfg.lora:
        return weights_digest(lm.model) == want
    with torch.random.fork_rng():  # (the adapters stay: the export loads the trained ones into them)
        torch.manual_seed(cfg.seed)
        apply_lora(lm.model, parse_lora(cfg.lora))
    return weights_digest(lm.model) == want


def main(argv=None, lm=None) -> dict:
    """Export the run; ``lm`` (tests): the base model, instead of loading --model."""
    from lm_probes.rm.export import check_export
    from rmgap.commands.train import export

    args = _parser().parse_args(argv)
    summary, cfg = run_config(args.run)
    check_export(args.out, cfg.objective)
    lm = lm or flags.load_model(args)
    trained, given = (summary.get("model") or {}).get("file_sha256"), lm.info.get("file_sha256")
    if trained and given and trained != given:
        raise ValueError(
            f"--model {args.model}: file SHA-256 {given[:12]}…, but {args.run} was trained from "
            f"{summary['model'].get('model')} ({trained[:12]}…); give that base model"
        )
    if not same_start(summary, cfg, lm):
        raise ValueError(
            f"--model {args.model}: its weights are not those {args.run} started from (the run's "
            "initial-weights digest differs); give that base model"
        )
    by = (
        summary.get("command")
        or f"the run in {args.run} (exported by {flags.command_line('rmgap export', argv)})"
    )
    return export(args.run / "checkpoint.pt", args.out, lm, cfg, by)
