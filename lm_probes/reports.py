"""What runs write and print: training outputs and learning curves, the probe's report and scatter.
Nothing here computes a result; every function takes what lm_probes.rm.trainer or
lm_probes.probe.one_step returned.

    write_training(result, out)    # summary.json, rewards_<set>.jsonl.gz, learning_curves.png
    write_probe(res, out)          # summary.json, records.csv, contributions.jsonl.gz, scatter.png
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np

from lm_probes.common import write_json, write_output_jsonl, write_text
from lm_probes.rm.evaluation import ACCURACY, current_names


def save_figure(fig, path: Path, dpi: int = 120) -> None:
    """Write ``fig`` atomically (a temporary file renamed over ``path``) and close it (pyplot keeps every
    open figure alive)."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        pyplot().close(fig)


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# --- training ---------------------------------------------------------------------------------------


# what a training run writes into its folder (lm_probes.common.claim_folder: what --overwrite replaces;
# rewards_*.jsonl: what runs wrote before their per-row outputs were compressed)
TRAIN_OUTPUTS = (
    "summary.json",
    "history.json",
    "checkpoint.pt",
    "rewards_*.jsonl.gz",
    "rewards_*.jsonl",
    "learning_curves.png",
    "precision_check.json",
    ".*.tmp*",
)


def write_training(result, out: Path) -> None:
    """``result`` (lm_probes.rm.trainer.TrainResult) → rewards_<set>.jsonl.gz, learning_curves.png and,
    last (a folder with it is finished), summary.json."""
    out = Path(out)
    for name, r in result.rewards.items():
        rows = (
            {
                "where": p.where,
                "group": p.group,
                "chosen": p.chosen,
                "rejected": p.rejected,
                "reward_chosen": rr[0],
                "reward_rejected": rr[1],
            }
            for p, rr in zip(result.eval_pairs[name], r, strict=True)
        )
        write_output_jsonl(out / f"rewards_{name.replace('/', '_')}.jsonl.gz", rows)
    objective = result.summary["config"]["objective"]
    fig = plot_curves({objective: result.summary["history"]})
    save_figure(fig, out / "learning_curves.png")
    write_json(out / "summary.json", result.summary)


def plot_curves(histories: dict[str, list[dict]]):
    """Accuracy per evaluation set and training loss per epoch, one line style per objective."""
    plt = pyplot()
    sets = [k for k in next(iter(histories.values()))[-1] if k not in ("epoch", "train_loss")]
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for j, (obj, hist) in enumerate(histories.items()):
        ls = ["-", "--", ":", "-."][j % 4]
        for i, s in enumerate(sets):
            done = [h for h in hist if s in h]  # epochs that were evaluated
            acc = [current_names(h[s])[ACCURACY] for h in done]
            x = [h["epoch"] for h in done]
            ax[0].plot(x, acc, marker="o", ms=3, color=f"C{i}", ls=ls, label=f"{obj}: {s}")
        trained = [h for h in hist if h["train_loss"] is not None]
        loss = [h["train_loss"] for h in trained]
        ax[1].plot([h["epoch"] for h in trained], loss, marker="o", ms=3, ls=ls, color="k", label=obj)
    ax[0].set(xlabel="epoch", ylabel="accuracy (ties = ½)", ylim=(-0.02, 1.02), title="evaluation sets")
    ax[0].legend(fontsize=7)
    ax[1].set(xlabel="epoch", ylabel="training loss", title="training loss")
    ax[1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def print_training(summary: dict) -> None:
    for name, m in summary["final"].items():
        m = current_names(m)
        print(
            f"{name:>20}: accuracy (ties ½) {m[ACCURACY]:.3f} "
            f"(strict {m['rewards/accuracies']:.3f}, ties {m['rmgap/tie_rate']:.3f}), "
            f"loss {m['loss']:.4f}, margin {m['rewards/margins']:.4g}"
        )
    print_dropped(summary["dropped"])


def print_dropped(dropped: dict[str, dict[str, list[str]]]) -> None:
    """One line per set and reason with the count and the first example."""
    for name, reasons in dropped.items():
        for reason, items in reasons.items():
            if items:
                print(f"{name}: left out {len(items)} pair(s) as {reason.replace('_', ' ')}, e.g. {items[0]}")


# --- the probe --------------------------------------------------------------------------------------


PROBE_OUTPUTS = (
    "summary.json",
    "records.csv",
    "contributions.jsonl.gz",
    "contributions.jsonl",  # (an older probe's)
    "scatter.png",
    ".*.tmp*",
)


def write_probe(res: dict, out: Path, figure: bool = True) -> None:
    out = Path(out)
    write_json(out / "summary.json", res["summary"])
    recs = res["records"]
    table = io.StringIO(newline="")
    w = csv.DictWriter(table, fieldnames=list(recs[0]))
    w.writeheader()
    w.writerows(recs)
    write_text(out / "records.csv", table.getvalue())
    write_output_jsonl(out / "contributions.jsonl.gz", res.get("contributions", []))
    if figure:
        save_figure(probe_scatter(recs, res["summary"]), out / "scatter.png", dpi=130)


def probe_scatter(records: list[dict], summary: dict):
    """Predicted vs observed Δr per reward type and column (symmetric-log axes, colour = group)."""
    plt = pyplot()
    names = summary["config"]["rewards"]
    panels = [
        (f"{name} {title}", f"{name}_{p}", f"{name}_{o}")
        for name in names
        for title, p, o in (
            ("head-only", "fixed_state", "head_only"),
            ("all params: first order", "first_order", "full"),
            ("all params: fixed-state prediction", "fixed_state", "full"),
        )
        if f"{name}_{p}" in records[0] and f"{name}_{o}" in records[0]
    ]
    ncol = min(3, len(panels))
    nrow = -(-len(panels) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.6 * ncol, 4.4 * nrow), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    groups = list(dict.fromkeys(r["group"] for r in records))
    for ax, (title, p, o) in zip(axes.flat, panels, strict=False):
        allv = np.array([[r[p], r[o]] for r in records])
        lin = max(np.percentile(np.abs(allv), 10), 1e-30)
        for i, g in enumerate(groups):
            v = np.array([[r[p], r[o]] for r in records if r["group"] == g])
            ax.scatter(v[:, 0], v[:, 1], s=10, color=f"C{i}", label=g, alpha=0.7)
        lim = np.abs(allv).max() * 1.2
        ax.plot([-lim, lim], [-lim, lim], "k:", lw=0.8)
        ax.set_xscale("symlog", linthresh=lin)
        ax.set_yscale("symlog", linthresh=lin)
        r = np.corrcoef(allv[:, 0], allv[:, 1])[0, 1]
        ax.set(title=f"{title}\nPearson {r:.4f}", xlabel="predicted Δr", ylabel="observed Δr")
        ax.title.set_fontsize(9)
    axes[0][0].legend(fontsize=8)
    m, c = summary["model"], summary["config"]
    fig.suptitle(
        f"{m.get('model')} ({m.get('dtype')}, {m.get('device')}), η = {c['lr']:g}, β = {c['beta']:g}, "
        f"{summary['n_train_triples']} training triple(s), {summary['n_eval_pairs']} evaluation pairs",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def print_probe(s: dict) -> None:
    c = s["config"]
    print(
        f"\nmodel {s['model'].get('model')} ({s['model'].get('dtype')}), η = {c['lr']:g}, β = {c['beta']:g}, "
        f"{s['n_train_triples']} training triple(s), {s['n_eval_pairs']} eval pairs"
    )
    for name, st in s.get("head_only", {}).items():
        print(
            f"head-only {name}: Pearson {st['pearson']:.6f}  Spearman {st['spearman']:.4f}  "
            f"sign agreement {st['sign_agreement']:.3f}  median rel. error {st['median_rel_error']:.2e}"
        )
    for name, st in s.get("full", {}).items():
        line = f"all params {name}: Pearson first-order {st['pearson_first_order']:.6f}"
        if "fixed_state" in st:
            line += (
                f", fixed-state {st['pearson_fixed_state']:.4f} "
                f"(sign agreement {st['fixed_state']['sign_agreement']:.3f})"
            )
        print(line)
    print("\nmean change of r(chosen) − r(rejected) per group:")
    names, cols = c["rewards"], ("fixed_state", "head_only", "first_order", "full")
    print(f"{'group':>11} {'RM':>12} " + " ".join(f"{col:>13}" for col in cols))
    for g, v in s["groups"].items():
        for name in names:
            cells = " ".join(f"{v[name].get(col, float('nan')):>13.3e}" for col in cols)
            print(f"{g:>11} {name:>12} {cells}")
    if s.get("by_response_pair"):
        print("\nall-parameter step, per response pair: mean Δ(r+ − r−) (fraction of prompts moved right)")
        for row in s["by_response_pair"]:
            cells = "  ".join(
                f"{name} {row[name]['full']['mean']:+.3e} ({row[name]['full']['fraction_right']:.0%})"
                for name in names
                if "full" in row[name]
            )
            print(f"  {row['group']:>10}  {row['chosen']!r} / {row['rejected']!r}:  {cells}")
    if s.get("max_margin_fraction_positive"):
        print(
            "\nmax-margin u* of training differences, fraction ⟨u*, h̄+ − h̄−⟩ > 0: "
            f"{s['max_margin_fraction_positive']}"
        )
    if s.get("boundary_merged"):
        print(
            f"\nnote: {len(s['boundary_merged'])} responses tokenise differently when joined to the prompt "
            f"(scored with separate tokenisation), e.g. {s['boundary_merged'][0]}"
        )
    if s.get("dropped_identical"):
        print(f"note: left out {len(s['dropped_identical'])} evaluation pair(s) with identical responses")
    print("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in s["timings"].items()))
