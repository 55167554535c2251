"""``rmgap probe``: run the reward-dynamics probe on a real LM and write its report.

    rmgap probe persona                                   # SmolLM2-135M-Instruct offline, Persona set
    rmgap probe persona --dtype float64 --lr 1e-4         # float64 check mode
    rmgap probe --data my.jsonl --train-rows 1 --model HuggingFaceTB/SmolLM2-360M-Instruct

Writes to --out (default runs/probe-<set>): summary.json, records.csv (one row per evaluation
response, every column), contributions.jsonl (per evaluation response: its tokens and the IM-RM's
per-token-pair contributions C±[k, l] = η g β² ρ_{k,l} ⟨h̄_k, h±_l⟩ to the predicted change, against
the training responses' tokens), scatter.png (predicted vs observed, symmetric-log axes, colour = group).
With --data, the first --train-rows rows are the training triples and the rest are evaluated.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from lm_probes.data import PERSONA_FILE, persona_probe_set, read_jsonl
from lm_probes.probe import ProbeConfig, run_probe


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="rmgap probe", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("set", nargs="?", choices=["persona"], help="built-in probe set")
    ap.add_argument("--data", type=Path, help="JSONL with prompt/chosen/rejected instead of a built-in set")
    ap.add_argument(
        "--train-rows", type=int, default=1, help="with --data: the first N rows are training triples"
    )
    ap.add_argument("--persona-file", type=Path, default=PERSONA_FILE)
    ap.add_argument(
        "--n-eval-statements", type=int, default=20, help="persona: statements evaluated (× 10 responses)"
    )
    ap.add_argument("--n-margin-statements", type=int, default=8, help="persona: statements for the u* check")
    ap.add_argument(
        "--model", default="smollm2", help="'smollm2' (offline default), a hub id or a local path"
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"])
    ap.add_argument(
        "--untie-head", action="store_true", help="untie the output head for the full-parameter step too"
    )
    ap.add_argument("--beta", type=float, default=ProbeConfig.beta)
    ap.add_argument("--lr", type=float, default=ProbeConfig.lr, help="η of the SGD step")
    ap.add_argument("--modes", default="head_only,full", help="comma list of head_only, full")
    ap.add_argument("--no-chat-template", action="store_true")
    ap.add_argument("--batch-size", type=int, default=ProbeConfig.batch_size)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--no-figure", action="store_true")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap


def main(argv=None, lm=None) -> dict:
    """Run from the command line; ``lm`` (a LoadedLM) may be passed in by tests to skip loading."""
    ap = build_parser()
    args = ap.parse_args(argv)
    if (args.set is None) == (args.data is None):
        ap.error("give exactly one of: a built-in set (persona) or --data FILE")
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    if not set(modes) <= {"head_only", "full"}:
        ap.error(f"--modes takes head_only and/or full, got {args.modes!r}")
    if args.data is not None:
        rows = read_jsonl(args.data)
        if not 0 < args.train_rows < len(rows):
            ap.error(f"--train-rows must be between 1 and {len(rows) - 1} for {args.data} ({len(rows)} rows)")
        data = {"train": rows[: args.train_rows], "eval": rows[args.train_rows :], "margin": None}
        name = args.data.stem
    else:
        data = persona_probe_set(
            args.persona_file,
            n_eval_statements=args.n_eval_statements,
            n_margin_statements=args.n_margin_statements,
            seed=args.seed,
        )
        name = "persona"
    out = args.out or Path("runs") / f"probe-{name}"
    t0 = time.perf_counter()
    if lm is None:
        from lm_probes.loading import load_lm

        lm = load_lm(args.model, device=args.device, dtype=args.dtype, untie_head=args.untie_head)
    t_load = time.perf_counter() - t0
    cfg = replace(
        ProbeConfig(),
        beta=args.beta,
        lr=args.lr,
        chat_template=not args.no_chat_template,
        batch_size=args.batch_size,
        modes=modes,
        ex_head_seed=args.seed,
        progress=not args.quiet,
    )
    res = run_probe(lm, data["train"], data["eval"], cfg, margin=data.get("margin"))
    res["summary"]["seconds"] = {"load": t_load, "probe": time.perf_counter() - t0 - t_load}
    write_report(res, out, figure=not args.no_figure)
    print_report(res["summary"])
    t = res["summary"]["timings"]
    print("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in t.items()))
    print(f"wrote {out}/summary.json, records.csv" + ("" if args.no_figure else ", scatter.png"))
    return res["summary"]


def write_report(res: dict, out: Path, figure: bool = True) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(_clean(res["summary"]), indent=2) + "\n")
    recs = res["records"]
    with open(out / "records.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(recs[0]))
        w.writeheader()
        w.writerows(recs)
    with open(out / "contributions.jsonl", "w") as f:
        for c in res.get("contributions", []):
            f.write(json.dumps(c) + "\n")
    if figure:
        scatter(recs, res["summary"]).savefig(out / "scatter.png", dpi=130, bbox_inches="tight")


def _clean(x):
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def scatter(records, summary):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (k, p, o)
        for k, p, o in [
            ("IM-RM head-only", "im_fixed_state", "im_head_only"),
            ("EX-RM head-only", "ex_fixed_state", "ex_head_only"),
            ("IM-RM all params: first order", "im_first_order", "im_full"),
            ("IM-RM all params: fixed-state prediction", "im_fixed_state", "im_full"),
            ("EX-RM all params: first order", "ex_first_order", "ex_full"),
            ("EX-RM all params: fixed-state prediction", "ex_fixed_state", "ex_full"),
        ]
        if p in records[0] and o in records[0]
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


def print_report(s: dict) -> None:
    print(
        f"\nmodel {s['model'].get('model')} ({s['model'].get('dtype')}), η = {s['config']['lr']:g}, "
        f"β = {s['config']['beta']:g}, {s['n_train_triples']} training triple(s), "
        f"{s['n_eval_pairs']} eval pairs"
    )
    if "head_only" in s:
        for k in ("im", "ex"):
            c = s["head_only"][k]
            print(
                f"head-only {k.upper()}: Pearson {c['pearson']:.6f}  Spearman {c['spearman']:.4f}  "
                f"sign agreement {c['sign_agreement']:.3f}  median rel. error {c['median_rel_error']:.2e}"
            )
    if "full" in s:
        for k in ("im", "ex"):
            c = s["full"][k]
            print(
                f"all params {k.upper()}: Pearson first-order {c['pearson_first_order']:.6f}, "
                f"fixed-state {c['pearson_fixed_state']:.4f} "
                f"(sign agreement {c['fixed_state']['sign_agreement']:.3f})"
            )
    print("\nmean change of r(chosen) − r(rejected) per group:")
    cols = sorted({c for g in s["groups"].values() for c in g["im"]})
    print(f"{'group':>11} {'RM':>3} " + " ".join(f"{c:>13}" for c in cols))
    for g, v in s["groups"].items():
        for k in ("im", "ex"):
            print(f"{g:>11} {k:>3} " + " ".join(f"{v[k].get(c, float('nan')):>13.3e}" for c in cols))
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
