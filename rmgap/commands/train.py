"""``rmgap train``: train one reward model of any registered type on JSONL files or shipped datasets
(lm_probes.rm.trainer) and write its outputs.

    rmgap train --train pairs.jsonl --eval test=test.jsonl --objective im_rm --epochs 2 --lr 1e-6
    rmgap train --train-set ultrafeedback_paraphrased/train --eval-set fr=ultrafeedback_french/test
    rmgap train --train-set ultrafeedback/test --precision-check --out runs/precision
"""

from __future__ import annotations

from pathlib import Path

from lm_probes.common import write_json
from lm_probes.data.formats import read_pairs
from lm_probes.data.pairs import data_overrides
from lm_probes.rm.config import TrainConfig
from lm_probes.rm.rewards import REWARDS
from rmgap import flags


def _parser():
    ap = flags.parser("rmgap train", __doc__)
    src = ap.add_argument_group("data")
    src.add_argument("--train", type=Path, help="JSONL, Parquet or a datasets folder")
    src.add_argument("--train-set", help="a shipped dataset as <name>/<split>, instead of --train")
    src.add_argument("--eval", action="append", default=[], metavar="NAME=FILE", help="repeatable")
    src.add_argument("--eval-set", action="append", default=[], metavar="NAME=name/split", help="repeatable")
    ap.add_argument("--objective", default="im_rm", choices=list(REWARDS), help="a registered reward type")
    for flag in ("epochs", "lr", "beta", "batch_size", "micro_batch"):
        default = getattr(TrainConfig, flag)
        ap.add_argument(f"--{flag.replace('_', '-')}", type=type(default), default=default)
    ap.add_argument("--no-chat-template", action="store_true")
    flags.add_lora_arg(ap)
    ap.add_argument(
        "--precision-check",
        action="store_true",
        help="do not train: how much --mixed-precision (default bf16) moves the rewards at θ₀ "
        "(printed, and written to --out/precision_check.json)",
    )
    ap.add_argument(
        "--export",
        type=Path,
        metavar="DIR",
        help="also save the trained RM in the Hugging Face format (lm_probes.rm.export.EXPORTS)",
    )
    flags.add_model_args(ap)
    flags.add_run_args(ap, "runs/train")
    flags.add_folder_args(ap, resume=True)
    return ap


def _data(args) -> tuple[list, dict]:
    """The training pairs and the named evaluation sets the flags give."""
    if args.train:
        train = read_pairs(args.train, group="train")
    else:
        train = flags.shipped_pairs(args.train_set, "train")
    from lm_probes.rm.trainer import RESERVED

    return train, flags.named_sets(args.eval, args.eval_set, ("--eval", "--eval-set"), RESERVED)


def precision_check(args, argv, lm, train, cfg) -> dict:
    """--precision-check: how much autocast moves the rewards at θ₀ (lm_probes.rm.precision), printed
    and written to --out/precision_check.json."""
    from lm_probes.rm.precision import autocast_effect

    precision = "bf16" if args.mixed_precision == "no" else args.mixed_precision
    res = autocast_effect(lm or flags.load_model(args), train, cfg, precision)
    print(f"rewards of {res['n_pairs']} training pairs at θ₀, {precision} autocast vs full precision:")
    for name in ("fp32", "mixed_reference", "autocast"):
        change = res["max_abs_reward_change"].get(name, 0.0)
        r = res[name]
        print(f"  {name:16s} mean |margin| {r['mean_abs_margin']:.3g}  loss {r['loss']:.6f}", end="")
        print(f"  max |Δr| {change:.3g}")
    res["command"] = flags.command_line("rmgap train", argv)
    write_json(args.out / "precision_check.json", res)
    print(f"wrote {args.out}/precision_check.json")
    return res


def main(argv=None, lm=None) -> dict:
    """Train one reward model on JSONL files or shipped datasets and write its outputs."""
    from lm_probes.reports import TRAIN_OUTPUTS, print_training, write_training
    from lm_probes.rm.trainer import train_reward_model

    ap = _parser()
    args = ap.parse_args(argv)
    if (args.train is None) == (args.train_set is None):
        ap.error("give exactly one of --train FILE or --train-set NAME/SPLIT")
    train, eval_sets = _data(args)
    cfg = flags.train_config(
        args,
        objective=args.objective,
        beta=args.beta,
        batch_size=args.batch_size,
        micro_batch=args.micro_batch,
        chat_template=not args.no_chat_template,
    )
    if args.export:
        from lm_probes.rm.export import check_export

        check_export(args.export, args.objective)
    flags.claim_out(args, TRAIN_OUTPUTS, needs=None if args.precision_check else "checkpoint.pt")
    if args.precision_check:
        return precision_check(args, argv, lm, train, cfg)
    runtime = flags.runtime_from(args)
    lm = lm or flags.load_model(args, runtime)
    result = train_reward_model(
        lm, train, eval_sets or {"train": train}, cfg, args.out, args.resume, runtime=runtime
    )
    result.summary["command"] = flags.command_line("rmgap train", argv)
    result.summary["data_overrides"] = data_overrides()  # (shipped sets RMGAP_DATA replaced, unchecked)
    if runtime.is_main:
        write_training(result, args.out)
        print_training(result.summary)
        print(f"wrote {args.out}/summary.json")
        if args.export:
            export(args.out / "checkpoint.pt", args.export, lm, cfg, result.summary["command"])
    return result.summary


def export(checkpoint: Path, folder: Path, lm, cfg, command: str) -> dict:
    """--export: the finished run's checkpoint (its full tensors, as any process count writes them)
    saved in the Hugging Face format, π_ref named as the base model ``lm`` was loaded."""
    from lm_probes.rm.checkpoints import read_checkpoint
    from lm_probes.rm.export import export_reward_model, reference_of

    state = read_checkpoint(checkpoint, map_location="cpu")
    meta = export_reward_model(folder, lm, state["model"], state["u"], cfg, reference_of(lm), command)
    print(f"exported {cfg.objective} to {folder} ({meta['loads_with']})")
    return meta
