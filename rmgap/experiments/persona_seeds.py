"""Persona over several training seeds (``rmgap persona --seeds 0,1,2``): the same data split (from
--seed), each seed its own data order and initial head, and per cell (responses × prompts × RM) the
mean accuracy over seeds, its range, and a 95 % CI that resamples both seeds and statements
(lm_probes.stats.seed_pair_bootstrap: a statement's pairs, which share its prompt, form one cluster,
the same for every seed).

    table = seeds_table({seed: {objective: TrainResult}}, n_boot=10_000)
    table["paraphrased"]["test"]["im"]   # {"mean", "min", "max", "per_seed", "ci95", "n_seeds", "n_pairs"}
    contrasts(runs)["ex_rm − im_rm"]["paraphrased_test"]   # the same, of the paired difference

The contrasts (CONTRASTS) are the paper's gap (EX-RM − IM-RM) and its two alternative hypotheses
(an EX-RM on the mean state, an IM-RM without reference), each where both reward types were run: the
per-pair difference of outcomes (ties ½) of the same seed, so its CI resamples seeds and statements
as a cell's does.
"""

from __future__ import annotations

import numpy as np

from lm_probes.stats import seed_pair_bootstrap
from theory import pair_outcomes

SETS = {
    "original_train": ("original", "train"),
    "original_test": ("original", "test"),
    "paraphrased_train": ("paraphrased", "train"),
    "paraphrased_test": ("paraphrased", "test"),
}


def cell(results: list, name: str, n_boot: int) -> dict:
    """One set of one RM over seeds: ``results`` the seeds' TrainResults, in seed order."""
    pairs = results[0].eval_pairs[name]
    if any([p.where for p in r.eval_pairs[name]] != [p.where for p in pairs] for r in results):
        raise ValueError(f"{name}: the seeds kept different pairs; they must share one data split")
    d = np.array([pair_outcomes(r.rewards[name][:, 0], r.rewards[name][:, 1]) for r in results])
    per_seed = d.mean(1)
    mean, lo, hi, _ = seed_pair_bootstrap(d, [p.prompt for p in pairs], n_boot=n_boot)
    return {
        "mean": mean,
        "min": float(per_seed.min()),
        "max": float(per_seed.max()),
        "per_seed": per_seed.tolist(),
        "ci95": [lo, hi],
        "n_seeds": len(results),
        "n_pairs": d.shape[1],
    }


def seeds_table(runs: dict, short: dict, n_boot: int = 10_000) -> dict:
    """table[original|paraphrased][train|test][ex|im|type] = :func:`cell`, from {seed: {objective:
    TrainResult}}; ``short``: the column key of an objective (persona.SHORT)."""
    seeds = sorted(runs)
    table: dict = {"original": {"train": {}, "test": {}}, "paraphrased": {"train": {}, "test": {}}}
    for obj in runs[seeds[0]]:
        for name, (kind, split) in SETS.items():
            table[kind][split][short.get(obj, obj)] = cell([runs[s][obj] for s in seeds], name, n_boot)
    return table


CONTRASTS = (  # (a, b): a − b, where both were run
    ("ex_rm", "im_rm"),  # the paper's gap
    ("ex_rm", "ex_rm_mean"),  # alternative 1: does reading one state explain the EX-RM's advantage?
    ("ex_rm_mean", "im_rm"),
    ("im_rm_no_ref", "im_rm"),  # alternative 2: is the IM-RM's reference to blame?
)


def contrasts(runs: dict, n_boot: int = 10_000) -> dict:
    """contrasts["a − b"][set] = {"mean", "ci95", "per_seed", "n_seeds", "n_pairs"}: the accuracy of a
    minus that of b, per pair and seed, from {seed: {objective: TrainResult}}."""
    seeds, out = sorted(runs), {}
    for a, b in CONTRASTS:
        if a not in runs[seeds[0]] or b not in runs[seeds[0]]:
            continue
        out[f"{a} − {b}"] = {}
        for name in SETS:
            pairs = runs[seeds[0]][a].eval_pairs[name]
            d = np.array(
                [
                    pair_outcomes(*runs[k][a].rewards[name].T) - pair_outcomes(*runs[k][b].rewards[name].T)
                    for k in seeds
                ]
            )
            mean, lo, hi, _ = seed_pair_bootstrap(d, [p.prompt for p in pairs], n_boot=n_boot)
            out[f"{a} − {b}"][name] = {
                "mean": mean,
                "ci95": [lo, hi],
                "per_seed": d.mean(1).tolist(),
                "n_seeds": len(seeds),
                "n_pairs": d.shape[1],
            }
    return out


def contrasts_markdown(c: dict) -> str:
    if not c:
        return ""
    lines = ["", "Paired differences of accuracy, mean over seeds [95 % CI over seeds and statements]:", ""]
    lines += ["| difference | " + " | ".join(SETS) + " |", "|---|" + "---:|" * len(SETS)]
    for name, sets in c.items():
        cells = (f"{v['mean']:+.3f} [{v['ci95'][0]:+.3f}, {v['ci95'][1]:+.3f}]" for v in sets.values())
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table_markdown(table: dict, header: str, fmt=lambda v: f"{v:.3f}", note: str | None = None) -> str:
    """The Persona table (responses × prompts rows, one column per RM), each cell ``fmt(value)``."""
    cols = list(table["original"]["train"])
    names = {"ex": "EX-RM", "im": "IM-RM"}
    lines = [header, "", *([note, ""] if note else [])]
    lines += [
        "| responses | prompts | " + " | ".join(names.get(c, c) for c in cols) + " |",
        "|---|---|" + "---:|" * len(cols),
    ]
    for kind in ("original", "paraphrased"):
        for split in ("train", "test"):
            cells = " | ".join(fmt(table[kind][split][c]) for c in cols)
            lines.append(f"| {kind} | {split} | {cells} |")
    return "\n".join(lines) + "\n"


def ci_cell(c: dict) -> str:
    """A cell over seeds as tables show it: mean [95 % CI] (min–max over seeds)."""
    return f"{c['mean']:.3f} [{c['ci95'][0]:.3f}, {c['ci95'][1]:.3f}] ({c['min']:.3f}–{c['max']:.3f})"


def seeds_markdown(table: dict, header: str) -> str:
    note = "Mean over seeds [95 % CI over seeds and statements] (range over seeds)."
    return table_markdown(table, header, ci_cell, note)
