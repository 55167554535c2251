"""rmgap hamiltonian's outputs: the graph-by-graph mass comparison, table.md, hamiltonian.png, the
files of a run, and ``--report`` (re-derived from summary.json alone, no model)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lm_probes.common import read_jsonl_rows, write_json, write_output_jsonl, write_text
from lm_probes.reports import pyplot, save_figure, write_training
from lm_probes.stats import wilson_ci
from rmgap.experiments import hamiltonian_generation as gen_
from rmgap.experiments.persona_seeds import ci_cell
from theory import accuracy

PAPER = {
    "model": "Pythia-1B",
    "accuracy": {"train": {"ex_rm": 1.0, "im_rm": 1.0}, "test": {"ex_rm": 0.980, "im_rm": 0.993}},
    "generation": {"im_rm": {"correct_fraction": {"train": 0.0, "test": 0.0}}},
}


def accuracy_ci(rewards: dict) -> dict:
    """{split: {rm: (N, 2) rewards of (chosen, rejected)}} → {split: {rm: the 95 % Wilson interval of
    the verification accuracy}} (ties as ½, rounded to a count)."""
    out: dict = {}
    for split, by_rm in rewards.items():
        out[split] = {}
        for rm, r in by_rm.items():
            acc = accuracy(np.asarray(r)[:, 0], np.asarray(r)[:, 1])
            out[split][rm] = list(wilson_ci(round(acc.half_ties * acc.n), acc.n))
    return out


def read_rewards(run: Path, rms) -> dict:
    """{split: {rm: (N, 2)}} from each RM's rewards_<split>.jsonl.gz (or an older run's .jsonl) in
    ``run``."""
    out: dict = {}
    for split in ("train", "test"):
        out[split] = {}
        for rm in rms:
            rows = read_jsonl_rows(Path(run) / rm / f"rewards_{split}.jsonl.gz")
            out[split][rm] = np.array([[r["reward_chosen"], r["reward_rejected"]] for r in rows])
    return out


def mass_vs_reference(s: dict) -> dict:
    """Per trained LM, graph by graph against the reference: the median of log10 π_θ(C|x)/π_ref(C|x),
    on how many graphs it is higher; for the IM-RM also how far below the tilt its mean sits."""
    ref = np.asarray(s["generation_mass"]["reference"]["log10"])
    out = {}
    for name, m in s["generation_mass"].items():
        if name == "reference":
            continue
        d = np.asarray(m["log10"]) - ref
        out[name] = {
            "median_log10_ratio": float(np.median(d)),
            "graphs_above": int((d > 0).sum()),
            "n": len(d),
        }
    if "tilt" in s and "im_rm" in out:
        out["im_rm"]["tilt_minus_mean_log10"] = (
            s["tilt"]["mean_log10"] - s["generation_mass"]["im_rm"]["mean_log10"]
        )
    return out


def header(s: dict) -> str:
    g = s["config"]["graphs"]
    return (
        f"Hamiltonian cycles ({g['n']} vertices, edge probability {g['edge_prob']}, {g['n_train']} train / "
        f"{g['n_test']} test graphs), {s['model'].get('model')}, preset {s['preset']}. "
        f"Command: `{s['command']}`"
    )


def frozen_rows(f: dict | None, n_rms: int) -> list[str]:
    """table.md's rows for what θ₀ verifies before training (lm_probes.probe.frozen), in the reference
    column: a linear head on the frozen last / mean states, and ln π_ref(y+) > ln π_ref(y−)."""
    if not f:  # (runs recorded before it existed have none)
        return []
    rest = " | —" * n_rms + " | — |"
    rows = []
    for key, label in (("last", "last state"), ("mean", "mean state")):
        r = f["linear_probe"][key]
        ci = r["test_ci95"]
        rows.append(
            f"| linear head on the frozen θ₀ {label} (λ by CV), train / test [95 % CI] | "
            f"{r['train']:.3f} / {r['test']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]{rest}"
        )
    r = f["reference_logprob"]
    rows.append(
        f"| ln π_ref(y+) > ln π_ref(y−), train / test [95 % CI] | {r['train']:.3f} / {r['test']:.3f} "
        f"[{r['test_ci95'][0]:.3f}, {r['test_ci95'][1]:.3f}]{rest}"
    )
    return rows


def table_markdown(s: dict, header: str) -> str:
    rms = list(s["accuracy"]["test"])
    names = ["reference", *rms]
    paper = PAPER["accuracy"]["test"]
    lines = [
        header,
        "",
        "| | " + " | ".join(names) + " | paper (IM-RM) |",
        "|---|" + "---:|" * (len(names) + 1),
    ]
    ci = s.get("accuracy_ci95", {})
    for split in ("train", "test"):
        cells = " | ".join(
            ["—"]
            + [
                f"{s['accuracy'][split][rm]:.3f}"
                + (f" [{ci[split][rm][0]:.3f}, {ci[split][rm][1]:.3f}]" if rm in ci.get(split, {}) else "")
                for rm in rms
            ]
        )
        lines.append(
            f"| verification accuracy, {split} | {cells} | {PAPER['accuracy'][split]['im_rm']:.3f} |"
        )
    lines += frozen_rows(s.get("frozen_baselines"), len(rms))
    for split in ("train", "test"):
        cells = " | ".join(f"{s['generation'][n]['correct_fraction'][split]:.3f}" for n in names)
        lines.append(f"| correct generations, {split} | {cells} | 0 |")
        cells = " | ".join(f"{s['generation'][n]['permutation_fraction'][split]:.3f}" for n in names)
        lines.append(f"| permutations generated, {split} | {cells} | — |")
    if "generation_constrained" in s:  # (runs recorded before it existed have none)
        lines += gen_.constrained_rows(s, names)
    cells = " | ".join(f"{s['generation_mass'][n]['mean_log10']:.2f}" for n in names)
    lines.append(f"| mean log10 π(C(x)\\|x), test | {cells} | — |")
    vs = s.get("mass_vs_reference", {})
    if vs:
        cells = " | ".join(
            [
                "—",
                *(
                    f"{vs[rm]['median_log10_ratio']:+.2f} ({vs[rm]['graphs_above']}/{vs[rm]['n']})"
                    for rm in rms
                ),
            ]
        )
        lines.append(f"| median log10 π_θ(C\\|x)/π_ref(C\\|x) (graphs higher) | {cells} | — |")
    if "tilt" in s:
        lines += [
            "",
            f"Theorem 1's tilt at the IM-RM's own test margins (mean δ = {s['tilt']['margin_mean']:.4f}, "
            f"β = {s['config']['train']['beta']}): mean log10 τ(p) = {s['tilt']['mean_log10']:.2f}: "
            "what the verifier with those margins that generates least would put on C"
            + (
                f", {vs['im_rm']['tilt_minus_mean_log10']:.1f} orders of magnitude above the IM-RM's mass."
                if "tilt_minus_mean_log10" in vs.get("im_rm", {})
                else "."
            ),
        ]
    lines.append(
        f"\nPaper (Pythia-1B): test accuracy EX-RM {paper['ex_rm']}, IM-RM {paper['im_rm']}; 0 correct."
    )
    return "\n".join(lines) + "\n"


def figure(s: dict):
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    rms = list(s["accuracy"]["test"])
    names = ["reference", *rms]
    x = np.arange(len(names))
    acc = [np.nan, *(s["accuracy"]["test"][rm] for rm in rms)]
    gen = [s["generation"][n]["correct_fraction"]["test"] for n in names]
    a.bar(x - 0.2, acc, 0.4, label="verification accuracy (test)")
    a.bar(x + 0.2, gen, 0.4, label="correct generations (test)")
    a.set_xticks(x, names)
    a.set_ylim(0, 1.05)
    a.legend(fontsize=8)
    a.set_title("verifying vs generating Hamiltonian cycles")
    ref = np.asarray(s["generation_mass"]["reference"]["log10"])
    for n, marker in zip(rms, "os^v", strict=False):
        b.scatter(ref, s["generation_mass"][n]["log10"], s=12, marker=marker, label=f"π_θ(C|x), {n}")
    if "tilt" in s:
        b.scatter(ref, s["tilt"]["log10"], s=12, marker="x", c="k", label="τ(p) at the IM-RM's margin")
    lim = [min(ref.min(), b.get_ylim()[0]), max(ref.max(), b.get_ylim()[1])]
    b.plot(lim, lim, "k:", lw=1, label="= π_ref(C|x)")
    b.set_xlabel("log10 π_ref(C(x)|x)")
    b.set_ylabel("log10 π(C(x)|x)")
    b.legend(fontsize=8)
    b.set_title("exact generation mass per test graph")
    fig.tight_layout()
    return fig


def write_hamiltonian(result: dict, records: dict, out: Path) -> None:
    for name, rec in records.items():
        if "train_result" in rec:
            write_training(rec["train_result"], out / name)
    rows = (
        {"lm": name, "split": split, "constrained": key == "generation_constrained", **smp}
        for name, rec in records.items()
        for key in ("generation", "generation_constrained")
        for split in ("train", "test")
        for smp in rec[key][split]["samples"]
    )
    write_output_jsonl(out / "samples.jsonl.gz", rows)
    write_json(out / "summary.json", {k: v for k, v in result.items() if k != "markdown"})
    write_text(out / "table.md", result["markdown"])
    save_figure(figure(result), out / "hamiltonian.png")


def report(run: Path) -> dict:
    """Re-derive a finished run's comparisons and table.md from its summary.json (no model needed)."""
    path = Path(run) / "summary.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no summary.json (is {run} a finished rmgap hamiltonian run?)")
    s = json.loads(path.read_text())
    s["mass_vs_reference"] = mass_vs_reference(s)
    s["accuracy_ci95"] = accuracy_ci(read_rewards(run, list(s["accuracy"]["test"])))
    markdown = table_markdown(s, header(s))
    write_json(path, s)
    write_text(Path(run) / "table.md", markdown)
    print(markdown)
    return s


def _over_seeds(d: np.ndarray) -> dict:
    """(K seeds, N items) values → mean, per-seed means, range, and the 95 % CI resampling seeds and
    items (lm_probes.stats.seed_pair_bootstrap; each graph its own cluster)."""
    from lm_probes.stats import seed_pair_bootstrap

    mean, lo, hi, _ = seed_pair_bootstrap(d, np.arange(d.shape[1]))
    per = d.mean(1)
    return {
        "mean": mean,
        "ci95": [lo, hi],
        "per_seed": per.tolist(),
        "min": float(per.min()),
        "max": float(per.max()),
    }


def write_seeds(runs: dict, out: Path) -> dict:
    """summary_seeds.json and table_seeds.md from {seed: (summary, records)}: per RM the test
    verification accuracy (ties ½), per LM the format-constrained rate of Hamiltonian cycles (train and
    test prompts) and the mean log10 exact mass, each over seeds (and graphs, for the first two)."""
    from theory import pair_outcomes

    seeds = sorted(runs)
    recs = [runs[k][1] for k in seeds]
    rms = [n for n in recs[0] if n != "reference"]
    acc = {
        rm: _over_seeds(np.array([pair_outcomes(*r[rm]["train_result"].rewards["test"].T) for r in recs]))
        for rm in rms
    }
    rate = {
        lm: {
            split: _over_seeds(
                np.array([r[lm]["generation_constrained"][split]["correct"] for r in recs], float)
            )
            for split in ("train", "test")
        }
        for lm in recs[0]
    }
    mass = {lm: [runs[k][0]["generation_mass"][lm]["mean_log10"] for k in seeds] for lm in recs[0]}
    res = {"seeds": seeds, "accuracy_test": acc, "constrained_rate": rate, "mass_mean_log10": mass}
    lines = [
        f"Hamiltonian cycles over training seeds {seeds} (graphs of --seed): mean [95 % CI over seeds and "
        "graphs] (range over seeds).",
        "",
        "| | " + " | ".join(recs[0]) + " |",
        "|---|" + "---:|" * len(recs[0]),
        "| verification accuracy, test | — | " + " | ".join(ci_cell(acc[rm]) for rm in rms) + " |",
    ]
    for split in ("train", "test"):
        cells = " | ".join(ci_cell(rate[lm][split]) for lm in recs[0])
        lines.append(f"| Hamiltonian cycles, format-constrained sampling, {split} | {cells} |")
    lines.append(
        "| mean log10 π(C(x)\\|x), test, per seed | "
        + " | ".join(", ".join(f"{v:.2f}" for v in mass[lm]) for lm in recs[0])
        + " |"
    )
    res["markdown"] = "\n".join(lines) + "\n"
    write_json(out / "summary_seeds.json", {k: v for k, v in res.items() if k != "markdown"})
    write_text(out / "table_seeds.md", res["markdown"])
    print("\n" + res["markdown"])
    return res
