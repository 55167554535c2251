"""``rmgap eval --compare A B``: two finished ``rmgap eval`` folders compared pair by pair, with the CI
and winner rule of ``rmgap shifts`` (rmgap.experiments.shifts_analysis.set_comparison): per set both
score, the paired difference of accuracy with ties as ½ (a − b) over the pairs both kept (matched by
``where``), its percentile-bootstrap CI over pairs, the winner by that CI ("tie" where it covers 0),
the plain higher-accuracy winner beside it, how many pairs would decide the difference, and the largest
difference of a reward. A folder is an eval's (results.json) or a training run's (summary.json and
its rewards_<set>.jsonl.gz): a run against the eval of its own export shows they agree.

    rmgap eval --model A_DIR --ref smollm2 --set ultrafeedback/test --out runs/a
    rmgap eval --model B_DIR --reward ex_rm --set ultrafeedback/test --out runs/b
    rmgap eval --compare runs/a runs/b --out runs/a_vs_b      # → comparison.json
    rmgap eval --compare runs/train_im_rm runs/a --out runs/check   # a training run vs its export
    rmgap eval --compare runs/train_im_rm:test runs/a:ultrafeedback_test --out runs/check   # sets named apart
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lm_probes.common import jsonl_file, jsonl_files, read_jsonl_rows, write_json
from rmgap import flags

NAMES = ("a", "b")
RUN_KEYS = ("model", "ref", "reward", "beta", "command")


def _spec(text: str) -> tuple[Path, str | None]:
    """FOLDER or FOLDER:SET (a set of that folder, compared whatever the other's set is called)."""
    folder, sep, name = text.rpartition(":")
    if sep and folder and not Path(text).exists():
        if not name:
            raise ValueError(f"--compare {text}: give FOLDER or FOLDER:SET")
        return Path(folder), name
    return Path(text), None


def _run(folder: Path) -> dict:
    """What --compare reads of a folder: an eval's results.json, or a training run's summary.json (its
    evaluation sets are its rewards_<set>.jsonl.gz files, or an older run's .jsonl)."""
    path = folder / "results.json"
    if not path.is_file():
        path = folder / "summary.json"
        if not path.is_file():
            raise ValueError(
                f"--compare {folder}: not a finished rmgap eval or training folder (no results.json)"
            )
    try:
        run = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg})") from None
    if path.name == "results.json":
        return run
    cfg = run.get("config", {})
    sets = {name: {} for name in jsonl_files(folder, "rewards_")}
    model = (run.get("model") or {}).get("model")
    return dict(
        model=model, reward=cfg.get("objective"), beta=cfg.get("beta"), command=run.get("command"), sets=sets
    )


def _rewards(folder: Path, name: str) -> dict[str, tuple[float, float]]:
    """{where: (reward_chosen, reward_rejected)} of one set's rewards file."""
    path = jsonl_file(folder / f"rewards_{name}.jsonl.gz")  # (or an older run's .jsonl)
    out = {}
    for n, row in enumerate(read_jsonl_rows(path), 1):
        try:
            out[row["where"]] = (float(row["reward_chosen"]), float(row["reward_rejected"]))
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}:{n}: not a row of where, reward_chosen, reward_rejected") from None
    return out


def _side(rew: np.ndarray, comp: dict, name: str) -> dict:
    return {
        "accuracy_strict": float(np.mean(rew[:, 0] > rew[:, 1])),
        "accuracy_ties_half": comp[name]["accuracy"],
        "tie_rate": comp[name]["tie_rate"],
        "normalized_abs_margin": comp[name]["normalized_abs_margin"],
    }


def compare_set(folders: tuple[Path, Path], names: tuple[str, str], n_boot: int, seed: int) -> dict:
    """One set of each run (``names``: its name in a and in b) compared on the pairs both scored."""
    from rmgap.experiments.shifts_analysis import set_comparison

    ra, rb = (_rewards(f, n) for f, n in zip(folders, names, strict=True))
    name = names[0]
    common = [w for w in ra if w in rb]
    if not common:
        raise ValueError(f"set {name!r}: the two runs scored no pair in common (matched by 'where')")
    rew = [np.array([r[w] for w in common]) for r in (ra, rb)]
    comp = set_comparison([rew[0]], [rew[1]], n_boot=n_boot, seed=seed, names=NAMES)
    return {
        **{n: _side(r, comp, n) for n, r in zip(NAMES, rew, strict=True)},
        "diff_accuracy_ties_half": comp["diff"],
        "diff_ci95": comp["diff_ci95"],
        "winner": comp["winner"],
        "winner_plain": comp["winner_plain"],
        "pairs_needed": comp["pairs_needed"],
        "n_pairs": comp["n_pairs"],
        "max_abs_reward_diff": float(np.abs(rew[0] - rew[1]).max()),  # (1 run against its own export: ≈ 0)
        "only_in_a": len(ra) - len(common),
        "only_in_b": len(rb) - len(common),
    }


def compare(args, argv, n_boot: int = 10_000) -> dict:
    """The comparison.json of ``--compare A B`` (module docstring), written to --out."""
    from lm_probes.common import claim_folder
    from lm_probes.distributed import launched_processes

    if launched_processes() > 1:
        raise ValueError("--compare reads two folders: run it in one process, not under accelerate launch")
    specs = [_spec(f) for f in args.compare]
    folders = tuple(f for f, _ in specs)
    runs = [_run(f) for f in folders]
    if bool(specs[0][1]) != bool(specs[1][1]):
        raise ValueError("--compare: name a set on both sides (A:SET B:SET) or on neither")
    if specs[0][1]:  # FOLDER:SET on both sides: those two sets, whatever their names
        pair = (specs[0][1], specs[1][1])
        for run, f, s in zip(runs, folders, pair, strict=True):
            if s not in run["sets"]:
                raise ValueError(f"--compare {f}:{s}: no set {s!r} there (it has {', '.join(run['sets'])})")
        matched = {pair[0] if pair[0] == pair[1] else f"{pair[0]}~{pair[1]}": pair}
    else:
        matched = {s: (s, s) for s in runs[0]["sets"] if s in runs[1]["sets"]}
    if not matched:
        raise ValueError(
            f"--compare: {folders[0]} and {folders[1]} share no evaluation set; name one of each: A:SET B:SET"
        )
    claim_folder(args.out, ("comparison.json",), resume=False, overwrite=args.overwrite)
    sets = {k: {"sets": list(v), **compare_set(folders, v, n_boot, args.seed)} for k, v in matched.items()}
    res = {
        "command": flags.command_line("rmgap eval", argv),
        "rule": "diff = accuracy (ties ½) of a − b over the pairs both kept; winner by its 95 % "
        "paired-bootstrap CI over pairs ('tie': the CI covers 0), as rmgap shifts",
        **{
            n: {"folder": str(f), **{k: r.get(k) for k in RUN_KEYS}}
            for n, f, r in zip(NAMES, folders, runs, strict=True)
        },
        "sets": sets,
    }
    write_json(Path(args.out) / "comparison.json", res)
    for s, c in sets.items():
        lo, hi = c["diff_ci95"]
        print(
            f"{s}: a {c['a']['accuracy_ties_half']:.3f} vs b {c['b']['accuracy_ties_half']:.3f} (ties ½), "
            f"a − b {c['diff_accuracy_ties_half']:+.3f} [{lo:+.3f}, {hi:+.3f}], winner {c['winner']}, "
            f"n {c['n_pairs']}"
        )
    print(f"wrote {args.out}/comparison.json")
    return res
