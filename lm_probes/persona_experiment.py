"""The paper's controlled token-level-shift experiment (THEORY.md §5, first bullet), end to end.

    python lm_probes/persona_experiment.py --preset cpu       # SmolLM2-135M-Instruct on 2 cores
    rmgap persona --preset paper --model meta-llama/Llama-3.2-1B-Instruct --device cuda
    rmgap persona --persona-file other_subset.jsonl --preset cpu

Data: statements of a Persona subset whose answer_matching_behavior is " Yes" (default
../shared/data/persona/agreeableness.jsonl), split seeded into 80 train / 40 test statements; the
prompt is the row's question. Training pairs: y+ = yes-prefix + {yes, sure}, y− = no-prefix + {no, never}
(two prefixes each, ``pairs_per_statement`` random combinations per statement). Evaluation sets:
original responses on train and on test prompts; paraphrased responses sharing no content word
("My response would be" + {certainly, absolutely} vs "I lean toward" + {not really, nope}) on train
and on test prompts. Both reward models (ex_rm, im_rm) are trained on the same data with the same
optimiser from the same initial LM.

Presets: ``paper`` = 50 epochs, Adam lr 1e-6, effective batch 32, β 0.01 (the paper's, for a GPU);
``cpu`` = 4 epochs, Adam lr 1e-5, effective batch 16, β 0.01: fewer epochs and a 10× larger learning
rate so that both RMs finish in ≤ 40 min on 2 cores with SmolLM2-135M-Instruct.
Output (--out): table.md and table.json (table.<original|paraphrased>.<train|test>.<ex|im>),
persona_curves.png, and each RM's own training outputs under <out>/<objective>/.
Paper (Pythia-1B, Llama-3.2-1B, Qwen2.5-1.5B): original 1 for both; paraphrased EX-RM 1, IM-RM 0.022
(train prompts) and 0.019 (test prompts).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from lm_probes.data import (
    NO_PREFIXES,
    NO_WORDS,
    PARA_NO_PREFIX,
    PARA_NO_WORDS,
    PARA_YES_PREFIX,
    PARA_YES_WORDS,
    PERSONA_FILE,
    YES_PREFIXES,
    YES_WORDS,
    DataError,
    Pair,
    persona_statements,
)
from lm_probes.train import TrainConfig, plot_curves, train_reward_model

PRESETS = {
    "paper": dict(epochs=50, lr=1e-6, batch_size=32, micro_batch=8, beta=0.01),
    "cpu": dict(epochs=4, lr=1e-5, batch_size=16, micro_batch=8, beta=0.01),
}
SETS = {
    "original_train": ("original", "train"),
    "original_test": ("original", "test"),
    "paraphrased_train": ("paraphrased", "train"),
    "paraphrased_test": ("paraphrased", "test"),
}


def persona_data(
    path=PERSONA_FILE, *, n_train: int = 80, n_test: int = 40, pairs_per_statement: int = 2, seed: int = 0
) -> dict:
    """{"train": [Pair], "eval": {set name: [Pair]}} as in the module docstring."""
    stmts = persona_statements(path)
    if len(stmts) < n_train + n_test:
        raise DataError(f"{path}: {len(stmts)} statements with answer ' Yes', need {n_train + n_test}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(stmts))
    train_s = [stmts[i] for i in order[:n_train]]
    test_s = [stmts[i] for i in order[n_train : n_train + n_test]]

    def original(group):
        return (
            f"{YES_PREFIXES[rng.integers(2)]} {YES_WORDS[rng.integers(2)]}",
            f"{NO_PREFIXES[rng.integers(2)]} {NO_WORDS[rng.integers(2)]}",
        )

    def paraphrased(group):
        return (
            f"{PARA_YES_PREFIX} {PARA_YES_WORDS[rng.integers(2)]}",
            f"{PARA_NO_PREFIX} {PARA_NO_WORDS[rng.integers(2)]}",
        )

    def pairs(statements, make, group):
        return [Pair(q, *make(group), group, w) for w, q in statements for _ in range(pairs_per_statement)]

    return {
        "train": pairs(train_s, original, "train"),
        "eval": {
            "original_train": pairs(train_s, original, "original_train"),
            "original_test": pairs(test_s, original, "original_test"),
            "paraphrased_train": pairs(train_s, paraphrased, "paraphrased_train"),
            "paraphrased_test": pairs(test_s, paraphrased, "paraphrased_test"),
        },
    }


def make_table(finals: dict[str, dict]) -> dict:
    """table[original|paraphrased][train|test][ex|im] = accuracy (ties as ½)."""
    table: dict = {"original": {"train": {}, "test": {}}, "paraphrased": {"train": {}, "test": {}}}
    for obj, final in finals.items():
        short = "ex" if obj == "ex_rm" else "im" if obj == "im_rm" else obj
        for name, (kind, split) in SETS.items():
            table[kind][split][short] = final[name]["rewards/accuracies"]
    return table


def table_markdown(table: dict, header: str) -> str:
    cols = list(table["original"]["train"])
    names = {"ex": "EX-RM", "im": "IM-RM"}
    lines = [
        header,
        "",
        "| responses | prompts | " + " | ".join(names.get(c, c) for c in cols) + " |",
        "|---|---|" + "---:|" * len(cols),
    ]
    for kind in ("original", "paraphrased"):
        for split in ("train", "test"):
            lines.append(
                f"| {kind} | {split} | " + " | ".join(f"{table[kind][split][c]:.3f}" for c in cols) + " |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None, lm_factory=None) -> dict:
    ap = argparse.ArgumentParser(
        prog="rmgap persona", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--persona-file", type=Path, default=PERSONA_FILE)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"])
    ap.add_argument(
        "--objectives", default="ex_rm,im_rm", help="comma list from ex_rm, im_rm, ex_rm_mean, im_rm_no_ref"
    )
    ap.add_argument("--epochs", type=int, help="override the preset")
    ap.add_argument("--lr", type=float, help="override the preset")
    ap.add_argument("--n-train", type=int, default=80)
    ap.add_argument("--n-test", type=int, default=40)
    ap.add_argument("--pairs-per-statement", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/persona"))
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    objectives = [o.strip() for o in args.objectives.split(",") if o.strip()]
    preset = dict(PRESETS[args.preset])
    if args.epochs:
        preset["epochs"] = args.epochs
    if args.lr:
        preset["lr"] = args.lr
    data = persona_data(
        args.persona_file,
        n_train=args.n_train,
        n_test=args.n_test,
        pairs_per_statement=args.pairs_per_statement,
        seed=args.seed,
    )
    if lm_factory is None:
        from lm_probes.loading import load_lm

        def lm_factory():
            return load_lm(args.model, device=args.device, dtype=args.dtype)

    finals, histories, t0 = {}, {}, time.perf_counter()
    for obj in objectives:
        cfg = replace(TrainConfig(), objective=obj, seed=args.seed, progress=not args.quiet, **preset)
        s = train_reward_model(
            lm_factory(), data["train"], data["eval"], cfg, out=args.out / obj, resume=args.resume
        )
        finals[obj], histories[obj] = s["final"], s["history"]
        model_info = s["model"]
        print(
            f"{obj}: "
            + ", ".join(f"{k} {v['rewards/accuracies']:.3f}" for k, v in s["final"].items())
            + f"  [{s['seconds'] / 60:.1f} min]",
            flush=True,
        )
    table = make_table(finals)
    cmd = "rmgap persona " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    header = (
        f"Persona ({args.persona_file.name}), {model_info.get('model')}, preset {args.preset} "
        f"({preset}), seed {args.seed}; accuracy with ties as ½. Command: `{cmd}`"
    )
    md = table_markdown(table, header)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(md)
    result = {
        "table": table,
        "preset": args.preset,
        "config": preset,
        "model": model_info,
        "command": cmd,
        "final": finals,
        "seconds": time.perf_counter() - t0,
        "paper": {"original": 1.0, "paraphrased": {"ex": 1.0, "im": {"train": 0.022, "test": 0.019}}},
    }
    (args.out / "table.json").write_text(json.dumps(result, indent=2) + "\n")
    plot_curves(histories).savefig(args.out / "persona_curves.png", dpi=120, bbox_inches="tight")
    print("\n" + md)
    return result


if __name__ == "__main__":
    main()
