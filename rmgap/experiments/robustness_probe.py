"""The cheap prediction beside the trained result (rmgap.experiments.robustness, ``probe`` stage): one
gradient step of the IM-RM's loss at θ₀ on a batch of training pairs (lm_probes.probe.direction), and
the exact first-order move of every probed pair's margin along it (lm_probes.probe.one_step.
first_order_moves), for the original pairs and for each transformation at its largest strength.

    move_ratio = mean margin move of the transformed pairs / that of the same pairs untransformed

1 means the step moves the transformed pairs as much as the originals (no brittleness predicted);
below 1, the step's gain does not carry over to the new tokens. The analysis ranks the
transformations by it against the trained IM-RMs' accuracy change (a Spearman correlation over a dozen
transformations, with a permutation p-value: with so few, often tied, values it decides little).
Written to ``<out>/probe.json`` with the probed pairs' ``where`` and the seconds it took.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from lm_probes.common import write_json
from lm_probes.probe.direction import first_order_moves, step_direction
from lm_probes.probe.one_step import ProbeConfig

PROBE_LR = 1e-3  # the step size (the ratios do not depend on it at first order)


def probe_moves(factory, cfg, train, groups, n_pairs: int, out: Path, say=print) -> dict:
    """The probe's margin moves (see the module docstring); read back from probe.json when it holds
    the same pairs and settings."""
    path = Path(out) / "probe.json"
    sets = [
        g[-1] for g in groups[1:] if g[0].original == "original"
    ]  # each transformation's largest strength
    wheres = [p.where for p in groups[0][0].pairs[:n_pairs]]
    key = {
        "train": [p.where for p in train],
        "wheres": wheres,
        "sets": [s.name for s in sets],
        "lr": PROBE_LR,
    }
    if path.exists() and (saved := json.loads(path.read_text())).get("key") == key:
        return saved
    t0, lm = time.perf_counter(), factory()
    d = step_direction(lm, replace(cfg, objective="im_rm"), train)
    probe_cfg = ProbeConfig(beta=cfg.beta, lr=PROBE_LR, progress=False)
    by_where = {es.name: {p.where: p for p in es.pairs} for es in [groups[0][0], *sets]}
    margins = {}
    for name in ["original", *(s.name for s in sets)]:
        evals = [by_where[name][w] for w in wheres]
        moves = first_order_moves(lm, "im_rm", evals, d.direction, d.head, d.head_direction, probe_cfg)
        if len(moves) != 2 * len(evals):
            raise RuntimeError(f"probe: a pair of {name} has identical responses")
        margins[name] = (moves[0::2] - moves[1::2]).tolist()
        say(f"probe {name}: {time.perf_counter() - t0:.0f} s", flush=True)
    base = np.mean(margins["original"])
    result = {
        "key": key,
        "n_train_pairs": d.n_pairs,
        "margin_moves": margins,
        "move_ratio": {s.transform: float(np.mean(margins[s.name]) / base) for s in sets},
        "set_of": {s.transform: s.name for s in sets},
        "seconds": time.perf_counter() - t0,
    }
    write_json(path, result)
    return result


def agreement(probe: dict, transforms: dict, n_perm: int = 10_000) -> dict:
    """Does the probe's move ratio rank the transformations as the trained IM-RMs' accuracy change
    does? Spearman ρ over the transformations, and a two-sided permutation p-value."""
    names = [n for n in probe["move_ratio"] if n in transforms]
    ratio = np.array([probe["move_ratio"][n] for n in names])
    strength = {n: max(transforms[n], key=float) for n in names}
    drop = np.array([transforms[n][strength[n]]["im_rm"]["accuracy_change"]["estimate"] for n in names])
    if len(names) < 3 or np.ptp(ratio) == 0 or np.ptp(drop) == 0:
        return {
            "n": len(names),
            "spearman": None,
            "p_permutation": None,
            "note": "too few or constant values",
        }
    rho = float(spearmanr(ratio, drop).statistic)
    rng = np.random.default_rng(0)
    perm = np.array([spearmanr(ratio, rng.permutation(drop)).statistic for _ in range(n_perm)])
    return {
        "n": len(names),
        "spearman": rho,
        "p_permutation": float(np.mean(np.abs(perm) >= abs(rho) - 1e-12)),
        "distinct_accuracy_changes": len(set(np.round(drop, 6))),
        "per_transform": {
            n: {"move_ratio": float(r), "im_rm_accuracy_change": float(a)}
            for n, r, a in zip(names, ratio, drop, strict=True)
        },
    }
