"""The robustness experiment's report (rmgap.experiments.robustness): the recorded times, table.md and
the dose-response figure (accuracy and normalised margin against measured token overlap, one curve
per RM type, a panel per family of transformations)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lm_probes.reports import pyplot, save_figure
from rmgap.experiments.robustness_cells import OBJECTIVES, TARGET_HALF_WIDTH, cell_dir

FAMILIES = {  # panel → transformations (those not evaluated are skipped)
    "math": ("latex_macros", "variable_renaming", "step_labels", "final_answer", "number_format"),
    "prose": ("synonyms", "contractions", "number_words", "british_american", "list_style"),
    "controls (reWordBench)": ("spaced_punctuation", "added_quotes"),
    "combined": ("combined",),
}
NAMES = {"ex_rm": "EX-RM", "im_rm": "IM-RM"}


def recorded_seconds(out: Path, seeds) -> dict:
    """The times the run recorded: each cell's training (summary.json), each evaluation group per cell
    (eval.json), the reference passes, and the invocations' wall time (run.json)."""
    train, evals, retrain = {}, {}, {}
    for obj in OBJECTIVES:
        for k in seeds:
            d = cell_dir(out, obj, k)
            if (d / "summary.json").exists():
                train[f"{obj}/seed{k}"] = json.loads((d / "summary.json").read_text()).get("cell_seconds")
            if (d / "eval.json").exists():
                record = json.loads((d / "eval.json").read_text())
                checks = record.pop("retrained", [])  # (trained again where the checkpoint was gone)
                evals[f"{obj}/seed{k}"] = sum(g["seconds"] for g in record.values())
                if checks:
                    retrain[f"{obj}/seed{k}"] = sum(c["seconds"] for c in checks)
    ref = 0.0
    if (out / "reference").exists():
        import torch

        ref = sum(
            torch.load(p, weights_only=False).get("seconds", 0.0) for p in (out / "reference").glob("*.pt")
        )
    run = json.loads((out / "run.json").read_text())
    total = sum(v for v in train.values() if v) + sum(evals.values()) + sum(retrain.values()) + ref
    return {
        "training": train,
        "evaluation": evals,
        "retraining": retrain,  # training again and checking the originals, where a checkpoint was gone
        "reference": ref,
        "cells_total": total,
        "cells_total_hours": total / 3600,
        "invocations": [{k: i[k] for k in ("started", "seconds", "stages")} for i in run["invocations"]],
    }


def _ci(c: dict) -> str:
    lo, hi = c["ci95"]
    return f"{c['estimate']:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def _accs(e: dict, obj: str) -> str:
    a = e[obj]["accuracy_per_seed"]
    return f"{np.mean(a):.3f} ({min(a):.2f}–{max(a):.2f})"


def _need(p: dict) -> str:
    fmt = lambda x: "∞" if x == float("inf") or x is None else f"{int(x)}"  # noqa: E731
    return f"{fmt(p['pairs_needed'])} / {fmt(p['pairs_needed_to_decide'])}"


def _row(name: str, strength: str, e: dict) -> str:
    ex, im = e["ex_rm"]["accuracy_change"]["estimate"], e["im_rm"]["accuracy_change"]["estimate"]
    return (
        f"| {name} | {strength} | {e['token_overlap']:.3f} | {e['changed_fraction']:.2f} "
        f"| {_accs(e, 'ex_rm')} | {_accs(e, 'im_rm')} | {ex:+.3f} | {im:+.3f} | {_ci(e['robustness_gap'])} "
        f"| {_ci(e['margin_gap'])} | {_need(e['power'])} |"
    )


def table_markdown(res: dict) -> str:
    cfg, seeds = res["config"], res["seeds"]
    ind = res["in_distribution"]
    lines = [
        f"# Robustness to token-level shifts: EX-RM vs IM-RM ({cfg['model'].get('model')}, preset "
        f"{cfg['preset']}, seeds {', '.join(map(str, seeds))})",
        "",
        f"Trained on {cfg['split']['n_train']} pairs of {cfg['train_set']}; evaluated on {ind['n_pairs']} "
        f"held-out pairs ({cfg['split']['test_prompts']} problems never seen in training: split "
        f"{cfg['split']['how']}). In distribution: EX-RM {_accs(ind, 'ex_rm')}, IM-RM {_accs(ind, 'im_rm')} "
        "(mean over seeds, range). Accuracy counts ties as ½.",
        "",
        "Gap = (EX-RM accuracy change) − (IM-RM accuracy change) from the original to the transformed "
        "pairs, the same pairs; > 0: the IM-RM loses more. 95 % CI resampling seeds and problems. "
        f"Pairs needed: for a CI half-width of {TARGET_HALF_WIDTH} / to decide the observed gap "
        "(at these seeds; ∞: seed variance alone exceeds it).",
        "",
        "| transformation | strength | token overlap | changed | EX-RM acc | IM-RM acc | EX-RM Δ | IM-RM Δ "
        "| gap [95 % CI] | margin gap | pairs needed |",
        "|---|---:|---:|---:|---|---|---:|---:|---|---|---|",
    ]
    for name, by_s in res["transforms"].items():
        for st, e in sorted(by_s.items(), key=lambda kv: float(kv[0])):
            if st != "0":
                lines.append(_row(name, st, e))
    for name, e in res.get("rewrites", {}).items():
        lines.append(_row(f"{name} (vs its originals)", "—", e))
    if "probe" in res:
        p = res["probe"]
        lines += ["", f"One-step probe (IM-RM): {p['summary']}"]
    if res.get("pending"):
        lines += ["", f"**Not evaluated yet** (the run stopped before them): {', '.join(res['pending'])}."]
    t = res["seconds"]
    what = "training, retraining, reference and evaluation"
    lines += ["", f"Recorded time: {t['cells_total_hours']:.2f} h of {what}."]
    return "\n".join(lines) + "\n"


def dose_figure(res: dict, path: Path) -> None:
    """Accuracy (top) and normalised margin change (bottom) against token overlap, per family."""
    plt = pyplot()
    fams = [(f, [n for n in names if n in res["transforms"]]) for f, names in FAMILIES.items()]
    fams = [(f, names) for f, names in fams if names]
    fig, axes = plt.subplots(2, len(fams), figsize=(4.2 * len(fams), 7), squeeze=False, sharey="row")
    for j, (fam, names) in enumerate(fams):
        for obj, color in (("ex_rm", "tab:blue"), ("im_rm", "tab:red")):
            pts = sorted(  # by overlap alone: equal overlaps (ties) must not compare the entries
                ((e["token_overlap"], e, n, s) for n in names for s, e in res["transforms"][n].items()),
                key=lambda p: p[0],
            )
            x = [p[0] for p in pts]
            acc = [p[1][obj]["accuracy"] for p in pts]
            err = [
                np.subtract(p[1][obj]["accuracy_change"]["ci95"], p[1][obj]["accuracy_change"]["estimate"])
                if "accuracy_change" in p[1][obj]
                else (0.0, 0.0)
                for p in pts
            ]
            yerr = np.abs(np.array(err)).T
            axes[0, j].errorbar(x, acc, yerr=yerr, color=color, marker="o", ms=4, capsize=2, label=NAMES[obj])
            mar = [
                p[1][obj]["normalized_margin_change"]["estimate"]
                if "normalized_margin_change" in p[1][obj]
                else 0.0
                for p in pts
            ]
            axes[1, j].plot(x, mar, color=color, marker="o", ms=4, label=NAMES[obj])
            if obj == "im_rm":
                for p, y in zip(pts, acc, strict=True):
                    if p[3] != "0":
                        axes[0, j].annotate(f"{p[2]}:{p[3]}", (p[0], y), fontsize=6, rotation=30)
        axes[0, j].set_title(fam)
        axes[1, j].set_xlabel("token overlap with the original responses")
        axes[0, j].invert_xaxis()
        axes[1, j].invert_xaxis()
    axes[0, 0].set_ylabel("accuracy (ties ½), mean over seeds")
    axes[1, 0].set_ylabel("normalised margin change")
    axes[0, 0].legend()
    fig.suptitle(
        "Dose-response: accuracy as the tokens change (same meaning); error bars: 95 % CI of the change"
    )
    save_figure(fig, path)
