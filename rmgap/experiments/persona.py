"""The paper's controlled token-level-shift experiment (theory/README.md §5, Persona), end to end.

    rmgap persona --preset cpu --out figures/persona_preset-cpu_on-2cpu   # SmolLM2-135M, 2 cores, ≈ 28 min
    rmgap persona --preset paper --model meta-llama/Llama-3.2-1B-Instruct --device cuda
    rmgap persona --persona-file other_subset.jsonl --objectives ex_rm,im_rm,ex_rm_mean

Data (lm_probes.data.persona.persona_data): statements of the shipped agreeableness subset (or
--persona-file) answered " Yes", split seeded into 80 train / 40 test statements, 2 random
(yes-prefix + {yes, sure}, no-prefix + {no, never}) pairs per statement. Evaluation sets: the
original templates and paraphrases sharing no content word, each on train and on test prompts. Every
reward type (--objectives, entries of lm_probes.rm.rewards) is trained on the same data with the same
optimiser from the same initial LM.

Presets: ``paper`` = 50 epochs, Adam lr 1e-6, effective batch 32, β 0.01 (the paper's, for a GPU);
``cpu`` = 4 epochs, Adam lr 1e-5, effective batch 16, β 0.01: fewer epochs and a 10× larger learning
rate so that two reward models finish in ≈ 30 min on 2 cores with SmolLM2-135M-Instruct.
Output (--out): table.md and table.json (table.<original|paraphrased>.<train|test>.<ex|im|type>),
persona_curves.png, and each RM's own training outputs (and checkpoint) under <out>/<objective>/;
with --seeds, under <out>/seed<k>/<objective>/, and each table cell the mean, range and CI over seeds
(rmgap.experiments.persona_seeds).
Paper (Pythia-1B, Llama-3.2-1B, Qwen2.5-1.5B): original 1 for both; paraphrased EX-RM 1, IM-RM 0.022
(train prompts) and 0.019 (test prompts).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from lm_probes.common import jsonl_file, read_jsonl_rows, write_json, write_text
from lm_probes.data.persona import persona_data
from lm_probes.reports import plot_curves, save_figure, write_training
from lm_probes.rm.checkpoints import same_config
from lm_probes.rm.config import TrainConfig
from lm_probes.rm.evaluation import ACCURACY, current_names
from lm_probes.rm.rewards import REWARDS
from lm_probes.rm.trainer import TrainResult, train_reward_model
from rmgap import flags
from rmgap.experiments.persona_seeds import (
    SETS,
    contrasts,
    contrasts_markdown,
    seeds_markdown,
    seeds_table,
    table_markdown,
)

PRESETS = {
    "paper": dict(epochs=50, lr=1e-6, batch_size=32, micro_batch=8, beta=0.01),
    "cpu": dict(epochs=4, lr=1e-5, batch_size=16, micro_batch=8, beta=0.01),
}
SHORT = {"ex_rm": "ex", "im_rm": "im"}  # the table's column keys; other types keep their names
PAPER = {"original": 1.0, "paraphrased": {"ex": 1.0, "im": {"train": 0.022, "test": 0.019}}}


def make_table(finals: dict[str, dict]) -> dict:
    """table[original|paraphrased][train|test][ex|im|type] = accuracy (ties as ½)."""
    table: dict = {"original": {"train": {}, "test": {}}, "paraphrased": {"train": {}, "test": {}}}
    for obj, final in finals.items():
        for name, (kind, split) in SETS.items():
            table[kind][split][SHORT.get(obj, obj)] = current_names(final[name])[ACCURACY]
    return table


def run_persona(
    lm_factory, data: dict, objectives, base: TrainConfig, out: Path | None, resume=False, runtime=None
):
    """Train every objective on ``data`` → {objective: TrainResult}; ``base``: the training settings
    (preset, seeds, progress) each objective trains with; checkpoints in <out>/<objective>/;
    ``runtime``: lm_probes.distributed."""
    results = {}
    for obj in objectives:
        cfg = replace(base, objective=obj)
        ckpt = out / obj if out else None
        done = read_finished(ckpt, cfg, data) if resume and ckpt else None
        results[obj] = done or train_reward_model(
            lm_factory(), data["train"], data["eval"], cfg, ckpt, resume, runtime=runtime
        )
        if ckpt and not done and (runtime is None or runtime.is_main):
            write_training(results[obj], ckpt)  # as each RM ends: a stopped run keeps its finished RMs
        s = results[obj].summary
        accs = ", ".join(f"{k} {current_names(v)[ACCURACY]:.3f}" for k, v in s["final"].items())
        if runtime is None or runtime.is_main:
            print(f"{obj}: {accs}  [{s['seconds'] / 60:.1f} min]", flush=True)
    return results


def read_finished(d: Path, cfg: TrainConfig, data: dict) -> TrainResult | None:
    """A finished RM of an earlier invocation read back from ``d`` (its summary.json, written last, and
    rewards_<set>.jsonl.gz, or an older run's .jsonl), if it was trained with ``cfg`` on these
    evaluation pairs: a --resume does not train it again, even where its checkpoint is gone (a fresh
    checkout keeps no ignored files)."""
    path = d / "summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    if not same_config(summary.get("config", {}), cfg):
        return None
    rewards, pairs = {}, {}
    for name, evals in data["eval"].items():
        f = jsonl_file(d / f"rewards_{name}.jsonl.gz")
        if not f.is_file():
            return None
        rows = read_jsonl_rows(f)
        key = [(r["where"], r["chosen"], r["rejected"]) for r in rows]
        if key != [(p.where, p.chosen, p.rejected) for p in evals]:
            return None  # (other data than this run's: pairs are matched in order, not by statement)
        pairs[name] = list(evals)
        rewards[name] = np.array([[r["reward_chosen"], r["reward_rejected"]] for r in rows], dtype=np.float64)
    return TrainResult(summary, rewards, {}, pairs)


def write_persona(result: dict, out: Path) -> None:
    """table.md, table.json and persona_curves.png (each RM's own outputs are written as it ends)."""
    write_text(out / "table.md", result["markdown"])
    write_json(out / "table.json", {k: v for k, v in result.items() if k not in ("runs", "markdown")})
    histories = {obj: r.summary["history"] for obj, r in result["runs"].items()}
    save_figure(plot_curves(histories), out / "persona_curves.png")


def main(argv=None, lm_factory=None) -> dict:
    ap = flags.parser("rmgap persona", __doc__)
    flags.add_preset_args(ap, PRESETS)
    ap.add_argument("--persona-file", type=Path, help="a Persona file (default: the shipped subset)")
    ap.add_argument("--objectives", default="ex_rm,im_rm", help=f"comma list of: {', '.join(REWARDS)}")
    ap.add_argument("--n-train", type=int, default=80)
    ap.add_argument("--n-test", type=int, default=40)
    ap.add_argument("--pairs-per-statement", type=int, default=2)
    ap.add_argument("--resume", action="store_true", help="continue each RM from <out>/<objective>/")
    ap.add_argument(
        "--seeds",
        help="comma list of training seeds (data order and head; the split stays --seed's): each RM per "
        "seed under <out>/seed<k>/, the table as mean, range and CI over seeds and statements",
    )
    flags.add_model_args(ap)
    flags.add_run_args(ap, "runs/persona")
    args = ap.parse_args(argv)
    objectives = flags.parse_list(args.objectives, tuple(REWARDS), "--objectives")
    config = {**PRESETS[args.preset], **flags.preset_overrides(args)}
    data = persona_data(
        args.persona_file,
        n_train=args.n_train,
        n_test=args.n_test,
        pairs_per_statement=args.pairs_per_statement,
        seed=args.seed,
    )
    t0 = time.perf_counter()
    runtime, factory = flags.model_factory(args, lm_factory)
    base = flags.train_config(args, **config)
    seeds = flags.parse_seeds(args.seeds) if args.seeds else None
    if seeds:
        out = args.out
        by_seed = {
            k: run_persona(
                factory, data, objectives, replace(base, seed=k), out / f"seed{k}", args.resume, runtime
            )
            for k in seeds
        }
        runs = {f"seed{k}/{obj}": r for k, rs in by_seed.items() for obj, r in rs.items()}
    else:
        runs = run_persona(factory, data, objectives, base, args.out, args.resume, runtime)
    model_info = next(iter(runs.values())).summary["model"]
    cmd = flags.command_line("rmgap persona", argv)
    source = args.persona_file.name if args.persona_file else "persona/agreeableness"
    header = (
        f"Persona ({source}), {model_info.get('model')}, preset {args.preset} ({config}), "
        + (f"split seed {args.seed}, training seeds {seeds}" if seeds else f"seed {args.seed}")
        + f"{'' if args.head_seed is None else f', head seed {args.head_seed}'}; "
        f"accuracy with ties as ½. Command: `{cmd}`"
    )
    diffs = None
    if seeds:
        table, diffs = seeds_table(by_seed, SHORT), contrasts(by_seed)
        markdown = seeds_markdown(table, header) + contrasts_markdown(diffs)
    else:
        table = make_table({obj: r.summary["final"] for obj, r in runs.items()})
        markdown = table_markdown(table, header)
    result = {
        "table": table,
        "preset": args.preset,
        "config": config,
        "model": model_info,
        "command": cmd,
        "final": {obj: r.summary["final"] for obj, r in runs.items()},
        "seconds": time.perf_counter() - t0,
        "paper": PAPER,
        "seeds": seeds,
        "contrasts": diffs,  # (with --seeds: the paper's gap and the alternatives, persona_seeds.CONTRASTS)
        "markdown": markdown,
        "runs": runs,
    }
    if runtime.is_main:
        write_persona(result, args.out)
        print("\n" + result["markdown"])
    return result


if __name__ == "__main__":
    main()
