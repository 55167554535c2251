"""The robustness experiment's analysis (rmgap.experiments.robustness): from the per-example rewards of
every cell to results.json, table.md and dose_response.png.

Per transformation and strength, on the pairs present in every cell (joined on ``where``):
  - each RM type's accuracy (ties ½) per seed, and its change from the original pairs;
  - the **robustness gap** = (EX-RM's accuracy change) − (IM-RM's), per pair and seed, averaged; its
    95 % CI resamples seeds and problems (lm_probes.stats.seed_pair_bootstrap; the pairs of one
    problem share its chosen solution, so they are resampled together). Positive: the IM-RM loses
    more. The same for the normalised margin (margin / std of the cell's original rewards);
  - the gap on the pairs the transformation changed, and the dose: token overlap of the rewritten
    responses with the originals under the model's tokenizer (lm_probes.data.rewrites), chrF;
  - the pairs and seeds a CI half-width of 0.05, and one that decides the observed gap, would need.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from lm_probes.common import read_jsonl_rows, write_json, write_text
from lm_probes.data.rewrites import rewrite_quality
from lm_probes.stats import seed_pair_bootstrap, seeds_and_pairs_needed
from rmgap.experiments.robustness_cells import OBJECTIVES, TARGET_HALF_WIDTH, cell_dir
from theory.rewards import pair_outcomes

N_BOOT = 10_000


def read_rewards(path: Path) -> dict[str, tuple[float, float]]:
    rows = read_jsonl_rows(path)  # (.jsonl.gz, or an older run's .jsonl)
    return {r["where"]: (r["reward_chosen"], r["reward_rejected"]) for r in rows}


def _ci(d, clusters) -> dict:
    est, lo, hi, _ = seed_pair_bootstrap(d, clusters, n_boot=N_BOOT)
    return {"estimate": est, "ci95": [lo, hi], "half_width": (hi - lo) / 2}


class Cells:
    """Every cell's rewards on every set: ``outcome(obj, set, wheres)`` (K, N) and ``margin`` (K, N)."""

    def __init__(self, out: Path, objectives, seeds, sets: list[str]):
        self.r = {
            (o, k): {s: read_rewards(cell_dir(out, o, k) / f"rewards_{s}.jsonl.gz") for s in sets}
            for o in objectives
            for k in seeds
        }
        self.objectives, self.seeds = objectives, seeds

    def common(self, sets: list[str]) -> list[str]:
        """The pairs (their ``where``) every cell scored in every one of ``sets``, in the first's order."""
        keys = set.intersection(*(set(by_set[s]) for by_set in self.r.values() for s in sets))
        return [w for w in next(iter(self.r.values()))[sets[0]] if w in keys]

    def outcome(self, obj: str, s: str, wheres: list[str]) -> np.ndarray:
        return np.array(
            [pair_outcomes(*np.array([self.r[obj, k][s][w] for w in wheres]).T) for k in self.seeds]
        )

    def margin(self, obj: str, s: str, wheres: list[str], original: str) -> np.ndarray:
        rows = []
        for k in self.seeds:
            scale = np.array(list(self.r[obj, k][original].values())).std(ddof=1) + 1e-12
            r = np.array([self.r[obj, k][s][w] for w in wheres])
            rows.append((r[:, 0] - r[:, 1]) / scale)
        return np.array(rows)


def _dose(original_pairs: dict, pairs: dict, wheres: list[str], tokenize) -> dict:
    """Token overlap (the dose), chrF and length ratio of the rewritten responses, and the share of
    pairs changed, over the analysed pairs."""
    o = [t for w in wheres for t in (original_pairs[w].chosen, original_pairs[w].rejected)]
    n = [t for w in wheres for t in (pairs[w].chosen, pairs[w].rejected)]
    q = rewrite_quality(o, n, tokenize)
    changed = [
        w
        for w in wheres
        if (pairs[w].chosen, pairs[w].rejected) != (original_pairs[w].chosen, original_pairs[w].rejected)
    ]
    return {
        "token_overlap": q["token_overlap"],
        "chrf": q["chrf"],
        "length_ratio_tokens": q["length_ratio_tokens"],
        "changed_fraction": len(changed) / len(wheres),
        "changed": changed,
    }


def compare(cells: Cells, s: str, original: str, wheres: list[str], clusters, changed: list[str]) -> dict:
    """One transformed set against its original set, on the same pairs: each RM's accuracy and
    margin change, the robustness gap (EX change − IM change) with its seeds-and-problems CI, the gap
    on the changed pairs, and the pairs and seeds needed."""
    ex, im = cells.objectives
    out = {}
    delta, mdelta = {}, {}
    for obj in (ex, im):
        acc = cells.outcome(obj, s, wheres)
        delta[obj] = acc - cells.outcome(obj, original, wheres)
        mdelta[obj] = cells.margin(obj, s, wheres, original) - cells.margin(obj, original, wheres, original)
        out[obj] = {
            "accuracy_per_seed": acc.mean(1).tolist(),
            "accuracy": float(acc.mean()),
            "accuracy_change": _ci(delta[obj], clusters),
            "normalized_margin_change": _ci(mdelta[obj], clusters),
        }
    gap = delta[ex] - delta[im]
    out["robustness_gap"] = _ci(gap, clusters)
    out["margin_gap"] = _ci(mdelta[ex] - mdelta[im], clusters)
    idx = [i for i, w in enumerate(wheres) if w in set(changed)]
    if len(idx) >= 2:
        out["robustness_gap_changed"] = {**_ci(gap[:, idx], np.asarray(clusters)[idx]), "n_pairs": len(idx)}
    need = seeds_and_pairs_needed(gap, clusters, TARGET_HALF_WIDTH)
    decide = seeds_and_pairs_needed(gap, clusters, abs(float(gap.mean()))) if gap.mean() else None
    out["power"] = {
        "target_half_width": TARGET_HALF_WIDTH,
        **need,
        "pairs_needed_to_decide": decide["pairs_needed"] if decide else math.inf,
        "seeds_needed_to_decide": decide["seeds_needed"] if decide else math.inf,
    }
    out["n_pairs"], out["n_seeds"] = len(wheres), len(cells.seeds)
    return out


def _entry(cells, es, original, by_where, wheres, clusters, tokenize) -> dict:
    dose = _dose(by_where[original], by_where[es.name], wheres, tokenize)
    changed = dose.pop("changed")
    return {
        "set": es.name,
        **dose,
        "counts": es.counts,
        **compare(cells, es.name, original, wheres, clusters, changed),
    }


def analyze(args, data, groups, seeds, preset, tokenize, pending=()) -> dict:
    """results.json, table.md and dose_response.png in ``args.out`` (see the module docstring);
    ``tokenize``: text → the model's token ids (the dose); ``pending``: the groups of the preset not
    scored by every cell yet (listed in the results, not analysed)."""
    from rmgap.experiments import robustness_report

    t0 = time.perf_counter()
    sets = {es.name: es for g in groups for es in g}
    cells = Cells(args.out, OBJECTIVES, seeds, list(sets))
    by_where = {n: {p.where: p for p in es.pairs} for n, es in sets.items()}
    results = {"transforms": {}, "rewrites": {}, "pending": list(pending)}
    for group in groups:
        original = group[0].original
        wheres = cells.common([original, *(es.name for es in group)])
        clusters = [by_where[original][w].prompt for w in wheres]
        for es in group:
            if es.name == original:
                continue
            entry = _entry(cells, es, original, by_where, wheres, clusters, tokenize)
            if original != "original":  # the shipped UltraFeedback rewrites, against their originals
                results["rewrites"][es.name] = {**entry, "original": _original_entry(cells, original, wheres)}
                continue
            by_strength = results["transforms"].setdefault(
                es.transform, {"0": _original_entry(cells, original, wheres)}
            )
            by_strength[f"{es.strength:g}"] = entry
    results["in_distribution"] = _original_entry(cells, "original", cells.common(["original"]))
    if (Path(args.out) / "probe.json").exists():
        from rmgap.experiments.robustness_probe import agreement

        probe = json.loads((Path(args.out) / "probe.json").read_text())
        agree = agreement(probe, results["transforms"])
        results["probe"] = {
            "move_ratio": probe["move_ratio"],
            "n_pairs": len(probe["key"]["wheres"]),
            "n_train_pairs": probe["n_train_pairs"],
            "seconds": probe["seconds"],
            "agreement": agree,
            "summary": _probe_summary(probe, agree),
        }
    results.update(
        seeds=seeds,
        split=data.split,
        config={
            **json.loads((Path(args.out) / "run.json").read_text())["record"],
            "eval": preset["eval"],
            "seeds": seeds,
            "objectives": list(OBJECTIVES),
            "command": args.command,
        },
        seconds=robustness_report.recorded_seconds(Path(args.out), seeds),
        analysis_seconds=time.perf_counter() - t0,
    )
    results["markdown"] = robustness_report.table_markdown(results)
    write_json(Path(args.out) / "results.json", results)
    write_text(Path(args.out) / "table.md", results["markdown"])
    robustness_report.dose_figure(results, Path(args.out) / "dose_response.png")
    print("\n" + results["markdown"])
    return results


def _original_entry(cells: Cells, original: str, wheres: list[str]) -> dict:
    """The untransformed pairs (strength 0): each RM's accuracy per seed."""
    out = {"set": original, "token_overlap": 1.0, "n_pairs": len(wheres)}
    for obj in cells.objectives:
        acc = cells.outcome(obj, original, wheres)
        out[obj] = {"accuracy_per_seed": acc.mean(1).tolist(), "accuracy": float(acc.mean())}
    return out


def _probe_summary(probe: dict, agree: dict) -> str:
    ratios = ", ".join(f"{n} {r:.2f}" for n, r in sorted(probe["move_ratio"].items(), key=lambda kv: kv[1]))
    rho = agree.get("spearman")
    rank = (
        f"Spearman ρ with the trained IM-RMs' accuracy change {rho:+.2f} over {agree['n']} transformations "
        f"(permutation p = {agree['p_permutation']:.2f}; "
        f"{agree['distinct_accuracy_changes']} distinct changes)"
        if rho is not None
        else f"no rank correlation ({agree['note']})"
    )
    return (
        f"margin move of the transformed pairs / the originals' after one step at θ₀ "
        f"({len(probe['key']['wheres'])} pairs): {ratios}. {rank}."
    )
