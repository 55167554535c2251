"""The paper's real-world generalisation experiment: train an EX-RM and an IM-RM on UltraFeedback (or
RewardMATH), evaluate under token-level shifts (paraphrases, translations) and domain shifts (math,
code), and count wins with paired-bootstrap CIs (theory/README.md §5).

    rmgap shifts --preset cpu --out figures/shifts_preset-cpu_on-2cpu              # ≈ 80 min, 2 cores
    rmgap shifts --preset cpu --train-set rewardmath --out figures/shifts-rewardmath_preset-cpu_on-2cpu
    rmgap shifts --preset paper --model meta-llama/Llama-3.2-1B-Instruct --device cuda --attention sdpa \
        --seeds 0,1,2
    rmgap shifts --combine figures/shifts_preset-cpu_on-2cpu figures/shifts-rewardmath_preset-cpu_on-2cpu \
        --out figures/shifts-combined_preset-cpu_on-2cpu
    rmgap shifts --preset cpu --out figures/shifts_preset-cpu_on-2cpu --resume    # finish or re-report a run
    rmgap shifts --preset cpu --mitigation augmentation --explicit-from figures/shifts_preset-cpu_on-2cpu \
        --out runs/shifts-augmentation     # an IM-RM mitigation (lm_probes.rm.mitigations)

Data (shipped, lm_probes/data/datasets): training on ``ultrafeedback`` = the 200 UltraFeedback training
pairs whose originals sit in the rewrite files (the prompt with orig_chosen/orig_rejected), or on
``rewardmath`` (its train split). Evaluation sets (EVAL_SETS): ultrafeedback/test, its paraphrased,
French and Spanish rewrites (same prompts, both responses rewritten), rewardbench_math, rewardbench_code,
rewardmath; plus ``train_subset`` (200 training pairs). Shift types per training set: SHIFTS. The paper's
drop rule: a pair whose (templated) prompt or either response exceeds 512 tokens is left out, never
truncated; the count is reported per set (``dropped_too_long``).

Presets (PRESETS): ``paper`` = the authors' settings (5 epochs, Adam lr 1e-6, effective batch 32,
β 0.01, chat template, 2000/1000 training pairs, every kept evaluation pair) for a GPU. ``cpu`` =
SmolLM2-135M-Instruct on 2 cores in ≈ 60 min for both RMs (summary.json: EX-RM 34.4, IM-RM 24.2 min): 200
training pairs (UltraFeedback: the 184 of them within 512 tokens), 1 epoch at lr 1e-5 with batch 8
(23 Adam steps; 10× the paper's lr, as the Persona cpu preset, so that so few steps move the model),
micro-batches of 2 pairs (8 pairs of ~550-token sequences exhaust 24 GiB), evaluation only after
training and on 100 pairs per set (a seeded subset of the kept pairs; the UltraFeedback test set and
its rewrites use the same rows where they survive the drop rule, so that their prompts' KV caches are
shared). Here a training epoch costs ≈ 12 min and one evaluation pass over the 800 pairs ≈ 11 min
(the IM-RM needs two: its reference and itself), so the full sets (≈ 1 500 pairs after the rule) and
the paper's 5 epochs would take over 4 hours per RM.

Outputs (--out): results.json, table.md, win_rates.png (rmgap.experiments.shifts_report), and each
RM's training outputs under <out>/<ex_rm|im_rm>/ (<out>/seed<k>/<rm>/ with several seeds), including
rewards_<set>.jsonl.gz (reward_chosen, reward_rejected) and, for the IM-RM, the per-token rewards
token_rewards_<set>.jsonl.gz of the in-distribution and token-level sets.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from lm_probes.data.pairs import DataError, Pair, encode_pairs, load_pairs, load_rows
from lm_probes.data.splits import length_rule
from lm_probes.rm.checkpoints import check_finished, same_config
from lm_probes.rm.config import TrainConfig
from lm_probes.rm.evaluation import ACCURACY, current_names
from lm_probes.rm.mitigations import get_mitigation
from lm_probes.rm.rewards import REWARDS
from lm_probes.rm.trainer import train_reward_model
from rmgap import flags
from rmgap.experiments import shifts_analysis, shifts_report

TRAIN_SETS = ("ultrafeedback", "rewardmath")
UF_FAMILY = ("ultrafeedback", "ultrafeedback_paraphrased", "ultrafeedback_french", "ultrafeedback_spanish")
EVAL_SETS = (*UF_FAMILY, "rewardbench_math", "rewardbench_code", "rewardmath")
REWRITES = UF_FAMILY[1:]
SHIFTS = {  # training set → evaluation set → shift type
    "ultrafeedback": {
        "ultrafeedback": "in_distribution",
        **{s: "token_level" for s in REWRITES},
        "rewardbench_math": "domain",
        "rewardbench_code": "domain",
        "rewardmath": "domain",
        "train_subset": "train",
    },
    "rewardmath": {
        "rewardmath": "in_distribution",
        **{s: "token_level" for s in REWRITES},
        "rewardbench_math": "domain",
        "rewardbench_code": "domain",
        "ultrafeedback": "domain",
        "train_subset": "train",
    },
}
TOKEN_SETS = ("in_distribution", "token_level")  # whose per-token IM rewards are kept
PAPER = {  # the paper's models (1B–8B); mean accuracies from a third-party summary of the paper
    "ultrafeedback": {
        "win_rate": {"token_level": {"ex_rm": 0.834, "im_rm": 0.166}, "domain": {"im_rm": 0.667}},
        "mean_accuracy": {
            "in_distribution": {"ex_rm": 0.752, "im_rm": 0.646},
            "token_level": {"ex_rm": 0.665, "im_rm": 0.602},
            "domain": {"ex_rm": 0.621, "im_rm": 0.720},
        },
    },
    "rewardmath": {"win_rate": {"token_level": {"ex_rm": 1.0}, "domain": {"ex_rm": 0.666}}},
}

PRESETS = {
    "paper": dict(
        train=dict(epochs=5, lr=1e-6, batch_size=32, micro_batch=8, beta=0.01),
        n_train={"ultrafeedback": 2000, "rewardmath": 1000},
        n_eval=None,
        max_part_length=512,
    ),
    "cpu": dict(
        train=dict(epochs=1, lr=1e-5, batch_size=8, micro_batch=2, beta=0.01),
        n_train={"ultrafeedback": 200, "rewardmath": 200},
        n_eval=100,
        max_part_length=512,
    ),
}


@dataclass
class ShiftData:
    train: list[Pair]
    eval: dict[str, list[Pair]]  # set → the evaluated pairs, in order
    dropped_too_long: dict[str, int]  # set → pairs left out by the length rule (of all its pairs)
    dropped_identical: dict[str, int]
    n_available: dict[str, int] = field(default_factory=dict)  # set → pairs kept by the rule


def training_pairs(train_set: str) -> list[Pair]:
    """All shipped training pairs of ``train_set``: UltraFeedback = the originals of the rewrite files,
    each with its paraphrase as ``Pair.rewrite`` (what the augmentation / consistency mitigations use)."""
    if train_set == "ultrafeedback":
        rows = load_rows("ultrafeedback_paraphrased", "train")
        return [
            Pair(
                r["prompt"],
                r["orig_chosen"],
                r["orig_rejected"],
                "train",
                f"{w} (original)",
                rewrite=(r["chosen"], r["rejected"]),
            )
            for w, r in rows
        ]
    if train_set == "rewardmath":
        return load_pairs("rewardmath", "train", group="train")
    raise ValueError(f"--train-set must be one of {', '.join(TRAIN_SETS)}, got {train_set!r}")


def shift_data(tokenizer, train_set: str, preset: dict, seed: int, max_length: int | None) -> ShiftData:
    """Training pairs and evaluation sets after the drop rule, subsampled as the preset says (seeded).
    The UltraFeedback test set and its rewrites draw the same row order, so they keep the same prompts
    wherever the rule allows."""
    rng = np.random.default_rng([seed, 10])
    max_part, n_eval = preset["max_part_length"], preset["n_eval"]
    pool = training_pairs(train_set)
    keep, n_long, n_same = length_rule(tokenizer, pool, max_part, max_length)
    order = [keep[i] for i in rng.permutation(len(keep))]
    train = [pool[i] for i in order[: preset["n_train"][train_set]]]
    data = ShiftData(train, {}, {"train": n_long}, {"train": n_same}, {"train": len(keep)})
    uf_order = None
    for name in EVAL_SETS:
        pairs = load_pairs(name, "test", group=name)
        if uf_order is None:  # the first set: ultrafeedback, whose rows the rewrites follow
            uf_order = rng.permutation(len(pairs))
        keep, n_long, n_same = length_rule(tokenizer, pairs, max_part, max_length)
        row_order = uf_order if name in UF_FAMILY else rng.permutation(len(pairs))
        kept = set(keep)
        chosen = [i for i in row_order if i in kept][:n_eval]
        data.eval[name] = [pairs[i] for i in chosen]
        data.dropped_too_long[name], data.dropped_identical[name] = n_long, n_same
        data.n_available[name] = len(keep)
    subset = train[:200]  # a 200-pair subset of the training pairs
    data.eval["train_subset"] = subset[:n_eval] if n_eval else subset
    data.n_available["train_subset"] = len(subset)
    return data


def cell_dir(out: Path, seed: int, objective: str, n_seeds: int) -> Path:
    return out / objective if n_seeds == 1 else out / f"seed{seed}" / objective


def cell_config(args, preset: dict, objective: str, seed: int) -> TrainConfig:
    """The training settings of one (seed, objective) cell: the preset's, through rmgap.flags."""
    cfg = flags.train_config(
        args,
        **preset["train"],
        objective=objective,
        max_part_length=preset["max_part_length"],
        eval_every_epoch=False,
        token_rewards=True,
    )
    return replace(cfg, seed=seed)


def preset_record(name: str, preset: dict, train_set: str) -> dict:
    return {"preset": name, "train_set": train_set, **preset, "time": time.strftime("%Y-%m-%d %H:%M")}


def token_rows(tokenizer, pairs: list[Pair], terms: list, cfg: TrainConfig) -> list[dict]:
    """Per pair: the response tokens (decoded one by one) and their reward terms, chosen and rejected."""
    e = encode_pairs(tokenizer, pairs, chat_template=cfg.chat_template, max_part_length=cfg.max_part_length)
    if len(e.encodings) != len(terms):
        raise RuntimeError("token rows: the evaluation pairs re-encode differently")
    rows = []
    for p, (c, r), (tc, tr) in zip(pairs, e.encodings, terms, strict=True):
        rows.append(
            {
                "where": p.where,
                "chosen_tokens": [tokenizer.decode([t]) for t in c.response_ids],
                "chosen_terms": np.asarray(tc).tolist(),
                "rejected_tokens": [tokenizer.decode([t]) for t in r.response_ids],
                "rejected_terms": np.asarray(tr).tolist(),
            }
        )
    return rows


def reuse_cell(source: Path, d: Path, cfg: TrainConfig, copy: bool = True) -> None:
    """Copy a finished cell's outputs (not its checkpoint) from another run into ``d``, after checking it
    was trained with exactly ``cfg`` (same preset, seed, objective; so on the same data). ``copy=False``:
    the check alone (the processes other than the main one, which copies)."""
    summary = source / "summary.json"
    if not summary.exists():
        raise DataError(f"{source}: no summary.json (not a finished cell)")
    if not same_config(json.loads(summary.read_text())["config"], cfg):
        raise DataError(f"{summary}: trained with another configuration than this run's {cfg.objective}")
    if not copy:
        return
    d.mkdir(parents=True, exist_ok=True)
    for f in source.iterdir():
        if f.is_file() and f.name != "checkpoint.pt":
            shutil.copy2(f, d / f.name)


def run_shifts(lm_factory, args, preset: dict, seeds, objectives, mitigation=None, runtime=None) -> dict:
    """Train and evaluate every (seed, objective) cell, writing each as it finishes (so ``--resume``
    skips finished cells and continues a cell from its checkpoint). With ``mitigation``
    (lm_probes.rm.mitigations) the implicit cell trains with its options and pairs; with
    ``args.explicit_from`` the explicit cell is copied from that run. ``runtime``
    (lm_probes.distributed): every process trains and evaluates its share, the main one writes.
    → {"data": {seed: ShiftData}, "tokenizer"}."""
    main_process = runtime is None or runtime.is_main
    say = print if main_process else (lambda *a, **k: None)
    lm0 = lm_factory()
    tok, max_len = lm0.tokenizer, lm0.info.get("max_positions")
    shift = SHIFTS[args.train_set]
    datas = {}
    for seed in seeds:
        data = datas[seed] = shift_data(tok, args.train_set, preset, seed, max_len)
        for obj in objectives:
            d = cell_dir(args.out, seed, obj, len(seeds))
            cfg = cell_config(args, preset, obj, seed)
            train = data.train
            if mitigation is not None and obj == objectives[1]:
                cfg, train = mitigation.config(cfg), mitigation.train_pairs(data.train)
            if args.resume and (d / "summary.json").exists():
                check_finished(d / "summary.json", cfg)
                say(f"seed {seed} {obj}: done before, read from {d}", flush=True)
                continue
            if args.explicit_from and obj == objectives[0]:
                reuse_cell(cell_dir(args.explicit_from, seed, obj, len(seeds)), d, cfg, copy=main_process)
                say(f"seed {seed} {obj}: copied from {args.explicit_from}", flush=True)
                continue
            t0 = time.perf_counter()
            lm = lm0 if lm0 is not None else lm_factory()
            lm0 = None  # a model is trained in place: each cell after the first loads a fresh one
            result = train_reward_model(lm, train, data.eval, cfg, d, args.resume, runtime=runtime)
            if not main_process:
                continue
            tokens = {
                name: token_rows(tok, data.eval[name], terms, cfg)
                for name, terms in result.token_rewards.items()
                if shift.get(name) in TOKEN_SETS
            }
            shifts_report.write_cell(result, tokens, d)
            accs = ", ".join(
                f"{k} {current_names(v)[ACCURACY]:.3f}" for k, v in result.summary["final"].items()
            )
            print(f"seed {seed} {obj}: {accs}  [{(time.perf_counter() - t0) / 60:.1f} min]", flush=True)
    if runtime is not None:
        runtime.barrier()  # every cell written before any process goes on
    return {"data": datas, "tokenizer": tok}


def _parser():
    ap = flags.parser("rmgap shifts", __doc__)
    flags.add_preset_args(ap, PRESETS)
    ap.add_argument("--train-set", choices=TRAIN_SETS, default="ultrafeedback")
    ap.add_argument("--objectives", default="ex_rm,im_rm", help="comma list of two reward types: EX, IM")
    ap.add_argument("--seeds", help="comma list of seeds (default: --seed); results are aggregated")
    ap.add_argument("--n-train", type=int, help="override the preset's number of training pairs")
    ap.add_argument("--n-eval", type=int, help="override the preset's pairs per evaluation set (0: all)")
    ap.add_argument("--n-boot", type=int, default=10_000, help="paired-bootstrap resamples")
    ap.add_argument("--resume", action="store_true", help="skip finished RMs, continue from checkpoints")
    ap.add_argument(
        "--mitigation", help="train the implicit RM with a mitigation (lm_probes.rm.mitigations; not ex_rm)"
    )
    ap.add_argument(
        "--explicit-from", type=Path, metavar="RUN", help="take the explicit RM's cell from this finished run"
    )
    ap.add_argument(
        "--combine", nargs="+", type=Path, metavar="RUN", help="combine finished runs' results.json files"
    )
    flags.add_model_args(ap)
    flags.add_run_args(ap, "runs/shifts")
    return ap


def _settings(args) -> tuple[tuple[str, str], object, list[int], dict]:
    """(the two objectives, the mitigation or None, the seeds, the preset with the flags' overrides)."""
    objectives = flags.parse_list(args.objectives, tuple(REWARDS), "--objectives")
    if len(objectives) != 2:
        raise ValueError("--objectives takes two reward types: the explicit one, then the implicit one")
    mitigation = get_mitigation(args.mitigation) if args.mitigation else None
    if mitigation is not None:
        if mitigation.name == "ex_rm":
            raise ValueError("--mitigation: ex_rm is the reference point, not a mitigation of the IM-RM")
        objectives = (objectives[0], mitigation.objective)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [args.seed]
    preset = {k: (dict(v) if isinstance(v, dict) else v) for k, v in PRESETS[args.preset].items()}
    preset["train"].update(flags.preset_overrides(args))
    if args.n_train:
        preset["n_train"][args.train_set] = args.n_train
    if args.n_eval is not None:
        preset["n_eval"] = args.n_eval or None
    return objectives, mitigation, seeds, preset


def _mitigation_effect(args, cells: dict, seeds, objectives) -> dict:
    """The mitigated IM cell against the plain one of --explicit-from, on the same pairs."""
    plain_obj = shifts_report.read_results(args.explicit_from)["config"]["objectives"][1]
    plain = [shifts_report.load_cell(cell_dir(args.explicit_from, s, plain_obj, len(seeds))) for s in seeds]
    mitigated = [cells[s][objectives[1]] for s in seeds]
    return {
        "plain_from": str(args.explicit_from),
        **shifts_analysis.mitigation_effect(plain, mitigated, SHIFTS[args.train_set], n_boot=args.n_boot),
    }


def _earlier_invocations(out: Path) -> list[dict]:
    """The invocations a results.json already in ``out`` records (a re-report keeps their times)."""
    path = Path(out) / "results.json"
    if not path.exists():
        return []
    old = json.loads(path.read_text())
    if "invocations" in old:
        return old["invocations"]
    cfg = old.get("config", {})
    return [
        {
            "command": cfg.get("command"),
            "time": cfg.get("time"),
            "seconds": old.get("seconds_this_invocation"),
        }
    ]


def main(argv=None, lm_factory=None) -> dict:
    args = _parser().parse_args(argv)
    cmd = flags.command_line("rmgap shifts", argv)
    if args.combine:
        runs = [shifts_report.read_results(p) for p in args.combine]
        combined = shifts_analysis.combine(runs, [str(p) for p in args.combine], command=cmd)
        combined["markdown"] = shifts_report.combined_markdown(combined)
        shifts_report.write_combined(combined, args.out)
        print(combined["markdown"])
        return combined
    objectives, mitigation, seeds, preset = _settings(args)
    t0 = time.perf_counter()
    runtime, factory = flags.model_factory(args, lm_factory)
    run = run_shifts(factory, args, preset, seeds, objectives, mitigation, runtime)
    if not runtime.is_main:
        return {}  # the main process analyses and writes
    cells = {
        seed: {obj: shifts_report.load_cell(cell_dir(args.out, seed, obj, len(seeds))) for obj in objectives}
        for seed in seeds
    }
    record = {**preset_record(args.preset, preset, args.train_set), "seeds": seeds}
    result = shifts_analysis.analyze(
        cells,
        run["data"],
        SHIFTS[args.train_set],
        objectives,
        config={**record, "mitigation": args.mitigation, "command": cmd},
        n_boot=args.n_boot,
        tokenize=lambda text: run["tokenizer"](text, add_special_tokens=False)["input_ids"],
    )
    if mitigation is not None and args.explicit_from:
        result["mitigation_effect"] = _mitigation_effect(args, cells, seeds, objectives)
    result["paper"] = PAPER[args.train_set]
    result["seconds_this_invocation"] = time.perf_counter() - t0
    result["invocations"] = [
        *_earlier_invocations(args.out),
        {"command": cmd, "time": record["time"], "seconds": result["seconds_this_invocation"]},
    ]
    result["markdown"] = shifts_report.table_markdown(result)
    shifts_report.write_results(result, args.out)
    print("\n" + result["markdown"])
    return result


if __name__ == "__main__":
    main()
