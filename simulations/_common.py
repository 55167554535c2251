"""Small helpers shared by the simulation scripts: output paths, JSON summaries, tables, the loss.
(The scripts stand on theory/ alone: nothing here imports lm_probes.)"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

FIGURES = Path(__file__).resolve().parent.parent / "figures"


def add_common_args(ap, default_seed: int = 0) -> None:
    ap.add_argument("--quick", action="store_true", help="small, fast run (used by the tests)")
    ap.add_argument("--seed", type=int, default=default_seed, help="random seed (everything derives from it)")
    ap.add_argument("--out-dir", type=Path, default=FIGURES, help="where <name>.png and <name>.json go")
    ap.add_argument("--no-figure", action="store_true", help="skip the PNG (the JSON is always written)")


def bradley_terry(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Per-pair Bradley–Terry loss −ln σ(r+ − r−) = softplus(r− − r+), differentiable (N,) → (N,)."""
    return torch.nn.functional.softplus(r_rejected - r_chosen)


def _plain(x):
    """What json cannot write by itself: numpy scalars and arrays, paths."""
    if isinstance(x, (np.generic, np.ndarray)):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"{type(x).__name__} is not JSON-serialisable")


def write_summary(summary: dict, config, out_dir: Path, name: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    payload = {"config": asdict(config), **summary}
    path.write_text(json.dumps(payload, indent=2, default=_plain, allow_nan=False) + "\n")
    return path


def save_figure(fig, out_dir: Path, name: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.png"
    fig.savefig(path, dpi=130, bbox_inches="tight")
    return path


def print_table(rows: list[tuple], header: tuple) -> None:
    cells = [tuple(f"{c:.4g}" if isinstance(c, float) else str(c) for c in r) for r in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for j, r in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def run_and_save(name: str, cfg, run, plot, args) -> dict:
    """Run ``run(cfg)``, record its wall time, write <name>.json (and <name>.png unless --no-figure)."""
    t0 = time.perf_counter()
    summary = run(cfg)
    summary["seconds"] = time.perf_counter() - t0
    write_summary(summary, cfg, args.out_dir, name)
    if not args.no_figure:
        save_figure(plot(summary, cfg), args.out_dir, name)
    return summary
