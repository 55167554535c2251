"""The probe's summary: how well each column's prediction matches the observed change, overall, per
evaluation group and per recurring response pair. Computation only, on lm_probes.probe.one_step's records."""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import pearsonr, spearmanr

COLUMNS = ("fixed_state", "head_only", "first_order", "full")


def compare(pred, obs) -> dict:
    """Pearson, Spearman, sign agreement and median relative error |pred − obs| / |obs|."""
    pred, obs = np.asarray(pred, float), np.asarray(obs, float)
    ok = len(pred) > 2 and np.std(pred) > 0 and np.std(obs) > 0
    return dict(
        pearson=float(pearsonr(pred, obs)[0]) if ok else math.nan,
        spearman=float(spearmanr(pred, obs)[0]) if ok else math.nan,
        sign_agreement=float(np.mean(np.sign(pred) == np.sign(obs))),
        median_rel_error=float(np.median(np.abs(pred - obs) / np.maximum(np.abs(obs), 1e-300))),
        n=len(pred),
    )


def summarise(records: list[dict], names: list[str]) -> dict:
    """Prediction-vs-observation statistics per reward type, overall and per group, and the mean
    change of r(chosen) − r(rejected) per group for every column."""
    groups = list(dict.fromkeys(r["group"] for r in records))

    def pick(key, group=None):
        return np.array([r[key] for r in records if group is None or r["group"] == group])

    def stats(pred, obs):
        c = compare(pick(pred), pick(obs))
        c["by_group"] = {g: compare(pick(pred, g), pick(obs, g)) for g in groups}
        return c

    have = set(records[0])
    out: dict = {"head_only": {}, "full": {}, "groups": {}}
    for name in names:
        fs, ho, fo, full = (f"{name}_{c}" for c in COLUMNS)
        if {fs, ho} <= have:
            out["head_only"][name] = stats(fs, ho)
        if {fo, full} <= have:
            out["full"][name] = {"first_order": stats(fo, full)}
            out["full"][name]["pearson_first_order"] = out["full"][name]["first_order"]["pearson"]
            if fs in have:
                out["full"][name]["fixed_state"] = stats(fs, full)
                out["full"][name]["pearson_fixed_state"] = out["full"][name]["fixed_state"]["pearson"]
    out["by_response_pair"] = by_response_pair(records, names)
    for g in groups:
        rows = [r for r in records if r["group"] == g]
        pairs = list(zip(rows[0::2], rows[1::2], strict=True))

        def moved(key, pairs=pairs):
            return float(np.mean([a[key] - b[key] for a, b in pairs]))

        out["groups"][g] = {
            name: {col: moved(f"{name}_{col}") for col in COLUMNS if f"{name}_{col}" in have}
            for name in names
        }
    return {k: v for k, v in out.items() if v}


def by_response_pair(records: list[dict], names: list[str]) -> list[dict]:
    """Per (group, chosen, rejected) response pair that recurs across prompts (as in the Persona set):
    for every column, the mean change of r(chosen) − r(rejected) and the fraction of prompts on which
    it moved the right way (> 0)."""
    pairs: dict[tuple, list] = {}
    for a, b in zip(records[0::2], records[1::2], strict=True):
        pairs.setdefault((a["group"], a["response"], b["response"]), []).append((a, b))
    out = []
    for (group, chosen, rejected), items in pairs.items():
        if len(items) < 2:
            continue
        row = {"group": group, "chosen": chosen, "rejected": rejected, "n": len(items)}
        for name in names:
            row[name] = {}
            for col in COLUMNS:
                key = f"{name}_{col}"
                if key in items[0][0]:
                    d = np.array([a[key] - b[key] for a, b in items])
                    row[name][col] = {"mean": float(d.mean()), "fraction_right": float(np.mean(d > 0))}
        out.append(row)
    return out
