"""The paper's central claim, tested with the power to decide it: is an IM-RM less robust than an EX-RM
to token-level shifts (the same meaning in other tokens)? (issue 22; theory/README.md §4–§5)

    rmgap robustness --preset cpu --seeds 0,1,2 --out figures/robustness_preset-cpu_on-2cpu   # ≤ 6 h, 2 cores
    rmgap robustness --preset cpu --seeds 0,1,2 --out figures/robustness_preset-cpu_on-2cpu --resume
    rmgap robustness --train-set my_pairs.jsonl --eval my_test.jsonl --out runs/mine    # your own pairs

1. **Data.** RewardMATH's 2 000 shipped training pairs (466 problems), split *by problem*
   (lm_probes.data.splits.split_by_prompt, ``--split-seed``): no test prompt is seen in training. The
   paper's length rule (a prompt or response over 512 tokens leaves the pair out) on the originals.
   The training pairs are the same for every seed; a seed changes the data order and the EX head.
2. **Training** (``train`` stage): an EX-RM and an IM-RM per seed, on the same pairs and settings
   (lm_probes.rm.trainer), each under ``<out>/<rm>/seed<k>/`` with its checkpoint (kept: the
   evaluation reads the trained weights from it).
3. **Evaluation** (``eval`` stage, rmgap.experiments.robustness_eval): the held-out pairs, and the same
   pairs under the preset's transformations of lm_probes.data.transforms and strengths (cpu:
   CPU_TRANSFORMS; paper: every math-applicable one at 0.25, 0.5, 1, and the UltraFeedback rewrites);
   per-example rewards ``<out>/<rm>/seed<k>/rewards_<set>.jsonl.gz``.
4. **Probe** (``probe`` stage, rmgap.experiments.robustness_probe): one IM-RM step at θ₀ on a training
   batch, and the exact first-order margin move of each transformation's pairs over the originals'.
5. **Analysis** (rmgap.experiments.robustness_analysis): per transformation and strength, the matched-
   pair robustness gap (EX-RM's accuracy change from original to transformed − IM-RM's, same pairs),
   with a 95 % CI that resamples seeds and problems; the dose-response figure against measured token
   overlap; the one-step probe's prediction; the pairs and seeds the observed effects need.

Every stage resumes (``--resume``): a finished cell or set is read back, a stopped one continues from
its checkpoint; a cell whose checkpoint is gone is trained again and must reproduce its records
(robustness_eval.trained_cell). ``<out>/run.json`` records the data (digests), the training settings and every
invocation with its time; a resume that would continue another run is refused, and an existing run
folder is never written over without ``--resume``.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lm_probes.common import write_json
from lm_probes.data.pairs import DataError, Pair, read_jsonl
from lm_probes.data.splits import length_rule, split_by_prompt
from lm_probes.data.transforms import applicable
from lm_probes.rm.trainer import train_reward_model
from rmgap import flags
from rmgap.experiments.robustness_cells import OBJECTIVES, cell_config, cell_dir

MATH_TRANSFORMS = tuple(n for n in applicable(("general", "math")) if n != "combined")
# the cpu preset's sets, by priority (evaluated group by group in this order): all combined (the
# lowest token overlap), the math transformations, a reWordBench control. Not evaluated at this preset:
# spaced_punctuation, synonyms and number_words (each changes nearly every response: a full pass per
# cell) and the prose tables that barely touch math solutions (contractions, british_american,
# list_style: token overlap ≥ 0.995); the paper preset has every one.
CPU_TRANSFORMS = (
    "combined",
    "final_answer",
    "latex_macros",
    "variable_renaming",
    "added_quotes",
    "step_labels",
    "number_format",
)
CPU_STRENGTHS = {"combined": (0.5, 1.0)}
PRESETS = {
    # 200 training pairs, 1 epoch at lr 1e-5, batch 8 (the shifts cpu preset, under which SmolLM2 learns
    # RewardMATH: 0.94 / 0.93 on a test set that overlapped training); ≈ 15–20 min per RM on 2 cores.
    # Test: ≤ 2 pairs per held-out problem, 200 pairs. CPU_TRANSFORMS at strength 1 and all of them
    # combined at 0.5 and 1 (the dose axis: token overlap ≈ 0.92–1.0 for one, ≈ 0.86 and 0.74 combined);
    # the UltraFeedback rewrites are left to the paper preset (RewardMATH-trained RMs are at chance
    # there: nothing to lose).
    "cpu": dict(
        train=dict(epochs=1, lr=1e-5, batch_size=8, micro_batch=2, beta=0.01),
        n_train=200,
        held_out=0.3,
        test_per_prompt=2,
        n_test=200,
        max_part_length=512,
        eval=dict(
            transforms={name: CPU_STRENGTHS.get(name, (1.0,)) for name in CPU_TRANSFORMS},
            transform_seed=0,
            rewrites=None,
        ),
        probe=dict(train_pairs=8, pairs=16),
    ),
    # tests only (--quick): a few pairs, two transformations
    "quick": dict(
        train=dict(epochs=1, lr=1e-3, batch_size=2, micro_batch=1, beta=0.1),
        n_train=6,
        held_out=0.4,
        test_per_prompt=2,
        n_test=6,
        max_part_length=64,
        eval=dict(
            transforms={"contractions": (1.0,), "synonyms": (0.5, 1.0)}, transform_seed=0, rewrites=None
        ),
        probe=dict(train_pairs=2, pairs=4),
    ),
    # the authors' settings (5 epochs, lr 1e-6, batch 32) on 1 000 pairs; every held-out pair
    "paper": dict(
        train=dict(epochs=5, lr=1e-6, batch_size=32, micro_batch=8, beta=0.01),
        n_train=1000,
        held_out=0.3,
        test_per_prompt=None,
        n_test=None,
        max_part_length=512,
        eval=dict(
            transforms={name: (0.25, 0.5, 1.0) for name in (*MATH_TRANSFORMS, "combined")},
            transform_seed=0,
            rewrites=dict(
                sets=("ultrafeedback_paraphrased", "ultrafeedback_french", "ultrafeedback_spanish"), n=None
            ),
        ),
        probe=dict(train_pairs=32, pairs=64),
    ),
}


@dataclass
class RobustnessData:
    train: list[Pair]
    test: list[Pair]  # the held-out pairs, originals
    split: dict  # how train and test were separated, and the counts


def digest(pairs: list[Pair]) -> str:
    """SHA-256 of the pairs' texts, in order (what a resume checks it continues)."""
    h = hashlib.sha256()
    for p in pairs:
        h.update(json.dumps([p.prompt, p.chosen, p.rejected]).encode())
    return h.hexdigest()


def _pool(spec: str, group: str) -> list[Pair]:
    """A shipped dataset (``rewardmath`` = rewardmath/train, or NAME/SPLIT) or a JSONL file."""
    if spec == "rewardmath":
        spec = "rewardmath/train"
    if Path(spec).suffix in (".jsonl", ".gz") or Path(spec).exists():
        return read_jsonl(spec, group=group)
    return flags.shipped_pairs(spec, group)


def _test_pairs(test: list[Pair], keep: list[int], per_prompt: int | None, n: int | None, rng) -> list[Pair]:
    """Up to ``per_prompt`` kept pairs of each held-out prompt (a seeded choice), prompts in a seeded
    order, until ``n`` pairs."""
    by_prompt: dict[str, list[Pair]] = {}
    for i in rng.permutation(keep):
        by_prompt.setdefault(test[i].prompt, []).append(test[i])
    out = []
    for k in rng.permutation(len(by_prompt)):
        out.extend(list(by_prompt.values())[k][:per_prompt])
    return out[:n] if n else out


def read_pools(args) -> tuple[list[Pair], list[Pair] | None]:
    """The pairs of ``--train-set`` and of ``--eval`` (None without it), read and checked."""
    return _pool(args.train_set, "train"), (_pool(args.eval, "test") if args.eval else None)


def robustness_data(tokenizer, args, preset: dict, max_length: int | None, pools=None) -> RobustnessData:
    """Training and held-out pairs: the split by prompt of ``--train-set`` (or, with ``--eval``, that
    file as the test set), the length rule, the preset's sizes (seeded by ``--split-seed``);
    ``pools``: read_pools(args), when already read."""
    rng = np.random.default_rng([args.split_seed, 1])
    pool, eval_pool = pools or read_pools(args)
    if args.eval:
        train_side, test_side = pool, eval_pool
        how = f"--eval {args.eval} as the test set; training on all of {args.train_set}"
    else:
        train_side, test_side = split_by_prompt(pool, preset["held_out"], args.split_seed)
        how = f"by prompt (problem): {preset['held_out']:.0%} of {args.train_set}'s prompts held out"
    max_part = preset["max_part_length"]
    keep_tr, long_tr, same_tr = length_rule(tokenizer, train_side, max_part, max_length)
    keep_te, long_te, same_te = length_rule(tokenizer, test_side, max_part, max_length)
    train = [train_side[i] for i in rng.permutation(keep_tr)[: preset["n_train"]]]
    test = _test_pairs(test_side, keep_te, preset["test_per_prompt"], preset["n_test"], rng)
    if not train or not test:
        raise DataError(
            f"robustness: {len(train)} training and {len(test)} test pairs survive the length rule"
        )
    seen = {p.prompt for p in train}
    split = dict(
        how=how,
        seed=args.split_seed,
        prompts_train=len({p.prompt for p in train_side}),
        prompts_test=len({p.prompt for p in test_side}),
        pairs_available=dict(train=len(keep_tr), test=len(keep_te)),
        dropped_too_long=dict(train=long_tr, test=long_te),
        dropped_identical=dict(train=same_tr, test=same_te),
        n_train=len(train),
        n_test=len(test),
        test_prompts=len({p.prompt for p in test}),
        test_prompts_seen_in_training=sum(p.prompt in seen for p in {p.prompt: p for p in test}.values()),
        digest=dict(train=digest(train), test=digest(test)),
    )
    return RobustnessData(train, test, split)


def train_cells(factory, args, data: RobustnessData, preset: dict, seeds, objectives) -> dict:
    """Train every (objective, seed) cell not finished yet → {(objective, seed): summary}. The trained
    weights stay in the cell's checkpoint.pt (the evaluation stage reads them)."""
    out = {}
    for seed in seeds:
        for obj in objectives:
            d = cell_dir(args.out, obj, seed)
            if (d / "summary.json").exists():
                out[obj, seed] = json.loads((d / "summary.json").read_text())
                continue
            cfg = cell_config(args, preset, obj, seed)
            t0 = time.perf_counter()
            result = train_reward_model(factory(), data.train, {}, cfg, d, resume=True)
            summary = {**result.summary, "cell_seconds": time.perf_counter() - t0}
            write_json(d / "summary.json", summary)
            out[obj, seed] = summary
            print(f"{obj} seed {seed}: trained in {summary['cell_seconds'] / 60:.1f} min", flush=True)
    return out


def run_record(args, preset: dict, data: RobustnessData, model_info: dict) -> dict:
    """What a resume must find unchanged: the data, the training settings, the model."""
    return {
        "train_set": args.train_set,
        "eval": args.eval,
        "preset": args.preset,
        "train": {**preset["train"], **flags.preset_overrides(args)},
        "max_part_length": preset["max_part_length"],
        "split": data.split,
        "model": {k: model_info.get(k) for k in ("model", "file_sha256", "dtype", "n_parameters")},
        # (only when given: run.json files written before --lora stay resumable)
        **({"lora": flags.lora_text(args)} if getattr(args, "lora", None) else {}),
    }


def open_run(out: Path, record: dict, resume: bool) -> dict:
    """The run's run.json: new, or (``resume``) the same run's; refuses to write over a run folder
    without ``--resume`` or to resume another run's."""
    path = Path(out) / "run.json"
    if path.exists():
        if not resume:
            raise DataError(f"{path}: a run is already here; pass --resume to continue it, or another --out")
        old = json.loads(path.read_text())
        if json.loads(json.dumps(old["record"])) != json.loads(json.dumps(record)):
            diff = sorted(k for k in record if old["record"].get(k) != json.loads(json.dumps(record[k])))
            raise DataError(f"{path}: another run (differs in {', '.join(diff)}); refusing to resume into it")
        return old
    if Path(out).exists() and any(Path(out).iterdir()):
        raise DataError(f"{out}: not empty and not a robustness run; choose another --out")
    return {"record": record, "invocations": []}


def _parser():
    ap = flags.parser("rmgap robustness", __doc__)
    flags.add_preset_args(ap, PRESETS)
    ap.add_argument("--seeds", default="0,1,2", help="comma list of training seeds (at least 3 for a CI)")
    ap.add_argument("--train-set", default="rewardmath", help="rewardmath, NAME/SPLIT or a JSONL file")
    ap.add_argument("--eval", help="a test set (JSONL or NAME/SPLIT) instead of the split of --train-set")
    ap.add_argument("--split-seed", type=int, default=0, help="seed of the split and the subsets")
    ap.add_argument(
        "--stages", default="train,eval,probe,analyze", help="comma list of: train, eval, probe, analyze"
    )
    ap.add_argument("--resume", action="store_true", help="continue the run in --out")
    ap.add_argument("--quick", action="store_true", help="(tests only) the 'quick' preset: a few pairs")
    flags.add_model_args(ap)
    flags.add_run_args(ap, "runs/robustness")
    return ap


def main(argv=None, lm_factory=None) -> dict:
    args = _parser().parse_args(argv)
    args.command = flags.command_line("rmgap robustness", argv)
    t_start, started = time.perf_counter(), time.strftime("%Y-%m-%d %H:%M")
    stages = flags.parse_list(args.stages, ("train", "eval", "probe", "analyze"), "--stages")
    seeds = flags.parse_seeds(args.seeds)
    if args.quick:
        args.preset = "quick"
    preset = PRESETS[args.preset]
    pools = read_pools(args)  # (bad input is refused before the model loads)
    if args.resume and not (Path(args.out) / "run.json").exists():
        raise DataError(
            f"{args.out}: --resume, but no run here (no run.json); leave out --resume to start one"
        )
    _, factory = flags.model_factory(args, lm_factory)
    lm0 = factory()
    data = robustness_data(lm0.tokenizer, args, preset, lm0.info.get("max_positions"), pools)
    run = open_run(args.out, run_record(args, preset, data, lm0.info), args.resume)
    write_json(args.out / "run.json", run)
    del lm0
    result = {}
    try:
        if "train" in stages:
            train_cells(factory, args, data, preset, seeds, OBJECTIVES)
        if {"eval", "probe", "analyze"} & set(stages):
            from rmgap.experiments import robustness_eval

            result = robustness_eval.evaluate_and_analyze(factory, args, data, preset, seeds, stages)
    finally:
        run["invocations"].append(
            dict(
                command=args.command,
                started=started,
                seconds=time.perf_counter() - t_start,
                stages=list(stages),
                seeds=seeds,
            )
        )
        write_json(args.out / "run.json", run)
    return result


if __name__ == "__main__":
    main()
