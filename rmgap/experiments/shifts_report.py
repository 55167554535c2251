"""What ``rmgap shifts`` writes and reads back: each RM's cell (training outputs, per-example rewards,
per-token IM rewards), results.json, table.md, win_rates.png, flips.jsonl.gz. No results are computed
here (rmgap.experiments.shifts_analysis does that)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lm_probes.common import (
    jsonl_files,
    read_jsonl_rows,
    write_json,
    write_jsonl,
    write_output_jsonl,
    write_text,
)
from lm_probes.data.pairs import DataError
from lm_probes.reports import pyplot, save_figure, write_training
from lm_probes.rm.rewards import REWARDS, get_reward_type

SHIFT_ORDER = ("in_distribution", "token_level", "domain", "train")
NAMES = {"ex_rm": "EX-RM", "im_rm": "IM-RM"}


def write_cell(result, tokens: dict[str, list[dict]], out: Path) -> None:
    """One RM: summary.json, rewards_<set>.jsonl.gz, learning_curves.png (write_training) and
    token_rewards_<set>.jsonl.gz (rows of rmgap.experiments.shifts.token_rows), each atomically and
    summary.json last (what --resume takes for a finished cell)."""
    for name, rows in tokens.items():
        write_jsonl(out / f"token_rewards_{name}.jsonl.gz", rows, ensure_ascii=False)
    write_training(result, out)


def load_cell(d: Path) -> dict:
    """A finished cell → {"summary", "rewards": {set: (N, 2)}, "where": {set: [...]},
    "tokens": {set: rows}}."""
    d = Path(d)
    if not (d / "summary.json").exists():
        raise DataError(f"{d}: no summary.json (the cell has not finished; run again with --resume)")
    summary = json.loads((d / "summary.json").read_text())
    cell = {"summary": summary, "rewards": {}, "where": {}, "tokens": {}}
    for name, f in jsonl_files(d, "rewards_").items():  # (.jsonl.gz, or an older run's .jsonl)
        rows = read_jsonl_rows(f)
        cell["rewards"][name] = np.array([[r["reward_chosen"], r["reward_rejected"]] for r in rows], float)
        cell["where"][name] = [r["where"] for r in rows]
    for name, f in jsonl_files(d, "token_rewards_").items():
        cell["tokens"][name] = read_jsonl_rows(f)
    return cell


def _fmt_ci(ci) -> str:
    return f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


def _seen(e: dict) -> str:
    o = e.get("overlap_with_training")
    return f"{o['same_prompt']} / {o['same_prompt_and_chosen']} of {o['n']}" if o else "–"


def table_markdown(res: dict) -> str:
    """table.md: evaluation sets grouped by shift type, win rates, rewrite quality, a few flips."""
    cfg, ex, im = res["config"], first_label(res["config"]), second_label(res["config"])
    who = {} if (ex, im) == ("EX-RM", "IM-RM") else {"ex_rm": ex, "im_rm": im}  # (winner slots, named)
    model = next(iter(res["models"].values())).get("model", "?")
    lines = [
        f"# Token-level vs domain shifts: trained on {cfg['train_set']}, {model}, preset {cfg['preset']}, "
        f"seeds {cfg['seeds']}",
        "",
        f"Command: `{cfg['command']}`. Accuracy counts ties as ½; margin = mean |r+ − r−| / (std of the "
        f"set's rewards + 1e-8); Δ = {ex} − {im} accuracy with its 95 % paired-bootstrap CI over the pairs; "
        f"winner: {ex} ({im}) when the CI lies above (below) 0, else tie; 'plain': higher accuracy wins; "
        "n* = pairs at which the observed Δ would be significant.",
        "",
        f"| shift | evaluation set | pairs (kept / dropped > 512) | {ex} acc | {im} acc | {ex} margin "
        f"| {im} margin | Δ ({ex} − {im}) | 95 % CI | winner | plain | n* "
        "| seen in training (prompt / + chosen) |",
        "|---|---|---|---:|---:|---:|---:|---:|---|---|---|---:|---|",
    ]
    for shift in SHIFT_ORDER:
        for name, e in res["eval"].items():
            if e["shift"] != shift:
                continue
            kept = f"{e['n_pairs']} of {e['n_available']} / {e['dropped_too_long'] or 0}"
            lines.append(
                f"| {shift} | {name} | {kept} | {e['ex_rm']['accuracy']:.3f} | {e['im_rm']['accuracy']:.3f} "
                f"| {e['ex_rm']['normalized_abs_margin']:.3f} | {e['im_rm']['normalized_abs_margin']:.3f} "
                f"| {e['diff']:+.3f} | {_fmt_ci(e['diff_ci95'])} | {who.get(e['winner'], e['winner'])} "
                f"| {who.get(e['winner_plain'], e['winner_plain'])} "
                f"| {e['pairs_needed']} | {_seen(e)} |"
            )
    lines += ["", "## Win rates (fraction of evaluation sets)", ""]
    lines += [f"| shift | rule | {ex} wins | tie | {im} wins | sets |", "|---|---|---:|---:|---:|---:|"]
    for shift in ("token_level", "domain"):
        for rule, key in (("CI", "win_rate"), ("plain", "win_rate_plain")):
            w = res[key][shift]
            lines.append(
                f"| {shift} | {rule} | {w['ex_rm']:.3f} | {w['tie']:.3f} | {w['im_rm']:.3f} | {w['n']} |"
            )
    lines += [
        "",
        "Mean accuracy by shift type: "
        + "; ".join(
            f"{t} {ex} {v['ex_rm']:.3f} / {im} {v['im_rm']:.3f}" for t, v in res["mean_accuracy"].items()
        ),
        "",
    ]
    lines += ["## Rewrite quality (all pairs of each rewrite test set, both responses, vs the originals)", ""]
    lines += [
        "| set | token overlap | unrelated-text overlap: mixed / same prompt / other prompt | chrF | BLEU "
        "| length ratio (chars) | (tokens) |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for name, q in res["rewrite_quality"].items():
        floors = " / ".join(
            f"{q[k]:.3f}" if k in q else "–"
            for k in (
                "token_overlap_unrelated",
                "token_overlap_unrelated_same_prompt",
                "token_overlap_unrelated_other_prompt",
            )
        )
        lines.append(
            f"| {name} | {q['token_overlap']:.3f} | {floors} | {q['chrf']:.1f} "
            f"| {q['bleu']:.1f} | {q['length_ratio_chars']:.2f} | {q['length_ratio_tokens']:.2f} |"
        )
    fl = res["flips"]
    lines += [
        "",
        f"## Why a pair flips ({im} wrong, {ex} right, under a token-level shift; all in flips.jsonl.gz)",
        "",
        f"Flipped pairs per set: {fl['n']}; the {im} had the same pair right before the rewrite in "
        f"{fl['im_rm_correct_before_rewrite']} of them. Largest per-token rewards {token_formula(cfg)}"
        + ("" if all(f.get("chosen_top") for f in fl["rows"]) else " (none kept by this reward type)")
        + ":",
        "",
    ]
    for f in (f for f in fl["rows"][:3] if f.get("chosen_top")):
        lines.append(
            f"- {f['where']}: IM r+ {f['im_rm'][0]:+.4f} vs r− {f['im_rm'][1]:+.4f}; "
            f"chosen {_tokens(f['chosen_top'])}; rejected {_tokens(f['rejected_top'])}"
        )
    if res.get("mitigation_effect"):
        lines += mitigation_markdown(res["mitigation_effect"], cfg["mitigation"])
    return "\n".join(lines) + "\n"


def objectives(cfg: dict) -> tuple[str, str]:
    """The run's two reward types: (ex_rm, im_rm), or what ``--objectives`` put in their place."""
    first, second = cfg.get("objectives") or ("ex_rm", "im_rm")
    return first, second


def first_label(cfg: dict) -> str:
    """What the first (explicit) RM of a run is called: the EX-RM, or the reward type run in its place
    (``--objectives ex_rm_mean,...``)."""
    ex = objectives(cfg)[0]
    return NAMES.get(ex, ex)


def second_label(cfg: dict) -> str:
    """What the second RM of a run is called: the IM-RM, the hybrid RM (EX head + IM reward on one
    backbone) that --mitigation hybrid puts in its place, or another reward type (``--objectives``)."""
    if cfg.get("mitigation") == "hybrid":
        return "hybrid RM"
    im = objectives(cfg)[1]
    return NAMES.get(im, im)


def token_formula(cfg: dict) -> str:
    """The per-token terms of the second RM's reward: with its reference, or without (im_rm_no_ref)."""
    name = objectives(cfg)[1]
    ref = name not in REWARDS or get_reward_type(name).uses_reference
    return "β(ln π_θ − ln π_ref)" if ref else "β ln π_θ (no reference)"


def mitigation_markdown(eff: dict, name: str) -> list[str]:
    """The section of table.md comparing the mitigated IM-RM with the plain one (mitigation_effect)."""
    lines = [
        "",
        f"## The {'hybrid RM' if name == 'hybrid' else f'IM-RM with `{name}`'} against the plain IM-RM of "
        f"{eff['plain_from']}",
        "",
        "Δ = mitigated − plain accuracy on the same pairs, with its 95 % paired-bootstrap CI.",
        "",
        "| shift | evaluation set | plain IM acc | mitigated IM acc | Δ | 95 % CI |",
        "|---|---|---:|---:|---:|---|",
    ]
    for shift in SHIFT_ORDER:
        for set_name, e in eff["sets"].items():
            if e["shift"] == shift:
                lines.append(
                    f"| {shift} | {set_name} | {e['plain']['accuracy']:.3f} "
                    f"| {e['mitigated']['accuracy']:.3f} | {e['diff']:+.3f} | {_fmt_ci(e['diff_ci95'])} |"
                )
    lines += [
        "",
        "Mean Δ by shift type: " + "; ".join(f"{t} {d:+.3f}" for t, d in eff["mean_diff_by_shift"].items()),
    ]
    return lines


def _tokens(top) -> str:
    return ", ".join(f"`{t!r}` {v:+.4f}" for t, v, _ in top[:5])


def win_rate_figure(
    win: dict, win_plain: dict, eval_: dict | None = None, title: str = "", names=("EX-RM", "IM-RM")
):
    """Stacked EX win / tie / IM win bars per shift type (CI rule and plain rule) and, given the
    evaluation sets, each set's Δ accuracy with its CI; ``names``: the two RMs' labels."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2 if eval_ else 1, figsize=(12 if eval_ else 6, 4), squeeze=False)
    ax = axes[0, 0]
    labels, bars = [], []
    for shift in ("token_level", "domain"):
        for rule, w in (("CI", win), ("plain", win_plain)):
            labels.append(f"{shift.replace('_', '-')}\n({rule}, {w[shift]['n']} sets)")
            bars.append([w[shift]["ex_rm"], w[shift]["tie"], w[shift]["im_rm"]])
    bars = np.nan_to_num(np.array(bars))
    left = np.zeros(len(bars))
    for k, (name, color) in enumerate(
        ((f"{names[0]} wins", "tab:blue"), ("tie", "0.75"), (f"{names[1]} wins", "tab:red"))
    ):
        ax.barh(labels, bars[:, k], left=left, color=color, label=name)
        left += bars[:, k]
    ax.set(xlim=(0, 1), xlabel="fraction of evaluation sets", title=title or "win rates")
    ax.invert_yaxis()
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3)
    if eval_:
        ax = axes[0, 1]
        items = [(n, e) for s in SHIFT_ORDER for n, e in eval_.items() if e["shift"] == s]
        colors = {"in_distribution": "k", "token_level": "tab:purple", "domain": "tab:green", "train": "0.5"}
        for i, (_, e) in enumerate(items):
            lo, hi = e["diff_ci95"]
            ax.errorbar(
                e["diff"], i, xerr=[[e["diff"] - lo], [hi - e["diff"]]], fmt="o", color=colors[e["shift"]]
            )
        ax.axvline(0, color="0.5", lw=0.8)
        ax.set_yticks(range(len(items)), [f"{n} ({e['shift']})" for n, e in items], fontsize=8)
        ax.invert_yaxis()
        xlabel = f"{names[0]} − {names[1]} accuracy (95 % paired-bootstrap CI)"
        ax.set(xlabel=xlabel, title="per evaluation set")
    fig.tight_layout()
    return fig


def write_results(res: dict, out: Path) -> None:
    """results.json (without the flip rows), table.md, win_rates.png, flips.jsonl.gz."""
    out = Path(out)
    body = {k: v for k, v in res.items() if k != "markdown"}
    body["flips"] = {k: v for k, v in res["flips"].items() if k != "rows"}
    write_json(out / "results.json", body)
    write_output_jsonl(out / "flips.jsonl.gz", res["flips"]["rows"])
    write_text(out / "table.md", res["markdown"])
    title = f"trained on {res['config']['train_set']}"
    names = (first_label(res["config"]), second_label(res["config"]))
    fig = win_rate_figure(res["win_rate"], res["win_rate_plain"], res["eval"], title, names)
    save_figure(fig, out / "win_rates.png")


def read_results(run: Path) -> dict:
    """A finished run's results.json (``run`` is its --out folder or the file)."""
    path = Path(run) / "results.json" if Path(run).is_dir() else Path(run)
    if not path.exists():
        raise DataError(f"{path}: no results.json (run `rmgap shifts --out {run}` first)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not JSON ({exc.msg})") from None


def combined_markdown(comb: dict) -> str:
    lines = [
        "# Win rates over all runs' cells (one cell = one run × one evaluation set)",
        "",
        f"Command: `{comb['command']}`. Runs: {', '.join(comb['runs'])}.",
        "",
        "| shift | rule | EX-RM wins | tie | IM-RM wins | cells |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for shift in ("token_level", "domain"):
        for rule, key in (("CI", "win_rate"), ("plain", "win_rate_plain")):
            w = comb[key][shift]
            lines.append(
                f"| {shift} | {rule} | {w['ex_rm']:.3f} | {w['tie']:.3f} | {w['im_rm']:.3f} | {w['n']} |"
            )
    lines += ["", "Per training set (like for like with the paper, which reports each training set):", ""]
    lines += [
        "| train set | shift | rule | EX-RM wins | tie | IM-RM wins | cells |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for ts, rules in comb.get("by_train_set", {}).items():
        for shift in ("token_level", "domain"):
            for rule, key in (("CI", "win_rate"), ("plain", "win_rate_plain")):
                w = rules[key][shift]
                if w["n"]:
                    lines.append(
                        f"| {ts} | {shift} | {rule} | {w['ex_rm']:.3f} | {w['tie']:.3f} | {w['im_rm']:.3f} "
                        f"| {w['n']} |"
                    )
    lines += ["", "| run | train set | set | shift | EX-RM | IM-RM | 95 % CI of Δ | winner | plain |"]
    lines += ["|---|---|---|---|---:|---:|---|---|---|"]
    for c in comb["cells"]:
        lines.append(
            f"| {c['run']} | {c['train_set']} | {c['set']} | {c['shift']} | {c['ex_rm']:.3f} "
            f"| {c['im_rm']:.3f} | {_fmt_ci(c['diff_ci95'])} | {c['winner']} | {c['winner_plain']} |"
        )
    return "\n".join(lines) + "\n"


def write_combined(comb: dict, out: Path) -> None:
    out = Path(out)
    write_json(out / "results.json", {k: v for k, v in comb.items() if k != "markdown"})
    write_text(out / "table.md", comb["markdown"])
    fig = win_rate_figure(comb["win_rate"], comb["win_rate_plain"], title="all runs combined")
    save_figure(fig, out / "win_rates.png")
