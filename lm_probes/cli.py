"""Command lines of the real-model layer: the flags they share, and ``rmgap train``, ``rmgap probe``
and ``rmgap data``. (``rmgap persona`` lives with its experiment in lm_probes.experiments.persona.)

    rmgap train --train pairs.jsonl --eval test=test.jsonl --objective im_rm --epochs 2 --lr 1e-6
    rmgap train --train-set ultrafeedback_paraphrased/train --eval-set fr=ultrafeedback_french/test
    rmgap probe persona                       # SmolLM2-135M-Instruct offline, the Persona probe set
    rmgap probe persona --dtype float64 --lr 1e-4 --rewards im_rm,ex_rm,ex_rm_mean
    rmgap probe --data my.jsonl --train-rows 1 --model HuggingFaceTB/SmolLM2-360M-Instruct
    rmgap data [--verify]

Errors in the input (a bad row, a missing file, a sequence longer than the context, …) end the
command with one line, ``rmgap <command>: error: <file:line: what>``, and exit status 2 (rmgap.cli).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from lm_probes.common import write_json
from lm_probes.data import DataError, catalog, load_pairs, read_jsonl, shipped_path
from lm_probes.rewards import REWARDS

DTYPES = ("float32", "float64", "bfloat16")


def parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def add_model_args(ap: argparse.ArgumentParser) -> None:
    """--model, --device, --dtype: which LM, where, in which precision."""
    g = ap.add_argument_group("model")
    g.add_argument("--model", default="smollm2", help="'smollm2' (offline default), a hub id or a local path")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    g.add_argument("--dtype", default="float32", choices=DTYPES)
    g.add_argument(
        "--attention",
        default="eager",
        choices=("eager", "sdpa"),
        help="eager (default; float64-exact, forward-mode autodiff) or sdpa (faster on long sequences)",
    )
    g.add_argument(
        "--mixed-precision",
        default="no",
        choices=("no", "bf16", "fp16"),
        help="autocast the forward passes, fp32 master weights (GPUs; lm_probes.distributed)",
    )


def add_run_args(ap: argparse.ArgumentParser, out: str | None) -> None:
    """--seed, --out, --quiet (and --debug, which rmgap.cli reads)."""
    g = ap.add_argument_group("run")
    g.add_argument("--seed", type=int, default=0, help="everything random derives from it")
    g.add_argument(
        "--head-seed", type=int, help="seed of the EX head's initial value alone (default: --seed)"
    )
    g.add_argument("--out", type=Path, default=None if out is None else Path(out), help="output folder")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g.add_argument("--debug", action="store_true", help="show the traceback of an error")


def parse_list(text: str, allowed, what: str) -> tuple[str, ...]:
    """ "a,b" → ("a", "b"), each checked against ``allowed``."""
    items = tuple(x.strip() for x in text.split(",") if x.strip())
    bad = [x for x in items if x not in allowed]
    if bad or not items:
        raise ValueError(f"{what}: {', '.join(bad) or '(none)'} not among {', '.join(allowed)}")
    return items


def command_line(prog: str, argv) -> str:
    """The command as typed, for the outputs' record: ``prog`` + the arguments."""
    return " ".join([prog, *(sys.argv[1:] if argv is None else argv)])


def runtime_from(args):
    """This process's lm_probes.distributed.Runtime: accelerate where the command was started by
    ``accelerate launch`` with several processes or --mixed-precision asks for it."""
    from lm_probes.distributed import Runtime

    return Runtime.from_env(getattr(args, "mixed_precision", "no"), cpu=args.device == "cpu")


def model_factory(args, lm_factory=None):
    """(this process's Runtime, a function giving a fresh LM on its device): the experiments' models,
    ``lm_factory``'s when given (tests), else those --model/--device/--dtype name."""
    runtime = runtime_from(args)
    return runtime, lm_factory or (lambda: load_model(args, runtime))


def load_model(args, runtime=None, **kw):
    """The LM named by --model/--device/--dtype (lm_probes.loading.load_lm), on this process's device
    when several processes share the work (``runtime``)."""
    from lm_probes.loading import load_lm

    device = str(runtime.device) if runtime is not None and runtime.device is not None else args.device
    return load_lm(args.model, device=device, dtype=args.dtype, attention=args.attention, **kw)


def named_set(spec: str, flag: str) -> tuple[str, str]:
    """ "NAME=VALUE" → (NAME, VALUE); a bare VALUE is named after it: a file by its stem
    ("dir/test.jsonl" → "test"), a shipped dataset by name and split ("rewardmath/test" →
    "rewardmath_test"), so that two unnamed datasets never share a name."""
    name, sep, value = spec.partition("=")
    if not sep:
        name, value = (
            (spec.replace("/", "_") if flag == "--eval-set" else Path(spec).name.split(".")[0]),
            spec,
        )
    if not name or not value:
        raise ValueError(f"{flag} takes NAME=VALUE, got {spec!r}")
    return name, value


def shipped_pairs(spec: str, group: str):
    """ "name/split" of a shipped dataset → its pairs."""
    name, sep, split = spec.partition("/")
    if not sep:
        raise DataError(f"{spec!r}: a shipped dataset is named <name>/<split> (see `rmgap data`)")
    return load_pairs(name, split, group=group)


# --- rmgap train -------------------------------------------------------------------------------------


def train_main(argv=None, lm=None) -> dict:
    """Train one reward model on JSONL files or shipped datasets and write its outputs."""
    from lm_probes.reports import print_training, write_training
    from lm_probes.train import TrainConfig, train_reward_model

    ap = parser("rmgap train", "Train one reward model (lm_probes.train) and write its outputs.")
    src = ap.add_argument_group("data")
    src.add_argument("--train", type=Path, help="JSONL with prompt/chosen/rejected")
    src.add_argument("--train-set", help="a shipped dataset as <name>/<split>, instead of --train")
    src.add_argument("--eval", action="append", default=[], metavar="NAME=FILE", help="repeatable")
    src.add_argument("--eval-set", action="append", default=[], metavar="NAME=name/split", help="repeatable")
    ap.add_argument("--objective", default="im_rm", choices=list(REWARDS), help="a registered reward type")
    for flag in ("epochs", "lr", "beta", "batch_size", "micro_batch"):
        default = getattr(TrainConfig, flag)
        ap.add_argument(f"--{flag.replace('_', '-')}", type=type(default), default=default)
    ap.add_argument("--no-chat-template", action="store_true")
    ap.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")
    ap.add_argument(
        "--precision-check",
        action="store_true",
        help="do not train: how much --mixed-precision (default bf16) moves the rewards at θ₀ "
        "(printed, and written to --out/precision_check.json)",
    )
    add_model_args(ap)
    add_run_args(ap, "runs/train")
    args = ap.parse_args(argv)
    if (args.train is None) == (args.train_set is None):
        ap.error("give exactly one of --train FILE or --train-set NAME/SPLIT")
    train = read_jsonl(args.train, group="train") if args.train else shipped_pairs(args.train_set, "train")
    eval_sets = {}
    for spec in args.eval:
        name, path = named_set(spec, "--eval")
        eval_sets[name] = read_jsonl(path, group=name)
    for spec in args.eval_set:
        name, value = named_set(spec, "--eval-set")
        eval_sets[name] = shipped_pairs(value, name)
    cfg = TrainConfig(
        objective=args.objective,
        epochs=args.epochs,
        lr=args.lr,
        beta=args.beta,
        batch_size=args.batch_size,
        micro_batch=args.micro_batch,
        seed=args.seed,
        head_seed=args.head_seed,
        chat_template=not args.no_chat_template,
        progress=not args.quiet,
    )
    if args.precision_check:
        from lm_probes.precision import autocast_effect

        precision = "bf16" if args.mixed_precision == "no" else args.mixed_precision
        res = autocast_effect(lm or load_model(args), train, cfg, precision)
        print(f"rewards of {res['n_pairs']} training pairs at θ₀, {precision} autocast vs full precision:")
        for name in ("fp32", "mixed_reference", "autocast"):
            change = res["max_abs_reward_change"].get(name, 0.0)
            r = res[name]
            print(f"  {name:16s} mean |margin| {r['mean_abs_margin']:.3g}  loss {r['loss']:.6f}", end="")
            print(f"  max |Δr| {change:.3g}")
        res["command"] = command_line("rmgap train", argv)
        write_json(args.out / "precision_check.json", res)
        print(f"wrote {args.out}/precision_check.json")
        return res
    runtime = runtime_from(args)
    lm = lm or load_model(args, runtime)
    result = train_reward_model(
        lm, train, eval_sets or {"train": train}, cfg, args.out, args.resume, runtime=runtime
    )
    result.summary["command"] = command_line("rmgap train", argv)
    if runtime.is_main:
        write_training(result, args.out)
        print_training(result.summary)
        print(f"wrote {args.out}/summary.json")
    return result.summary


# --- rmgap probe -------------------------------------------------------------------------------------


def probe_main(argv=None, lm=None) -> dict:
    """Run the reward-dynamics probe (lm_probes.probe) and write its report."""
    from lm_probes.loading import float64_problem
    from lm_probes.persona import persona_probe_set
    from lm_probes.probe import ProbeConfig, run_probe
    from lm_probes.reports import print_probe, write_probe

    ap = parser("rmgap probe", __doc__)
    ap.add_argument("set", nargs="?", choices=["persona"], help="built-in probe set")
    ap.add_argument("--data", type=Path, help="JSONL with prompt/chosen/rejected instead of a built-in set")
    ap.add_argument("--train-rows", type=int, default=1, help="with --data: the first N rows are triples")
    ap.add_argument("--persona-file", type=Path, help="a Persona file (default: the shipped subset)")
    ap.add_argument("--n-eval-statements", type=int, default=20, help="persona: statements (× 10 responses)")
    ap.add_argument("--n-margin-statements", type=int, default=8, help="persona: statements for the u* check")
    ap.add_argument("--rewards", default="im_rm,ex_rm", help=f"comma list of: {', '.join(REWARDS)}")
    ap.add_argument("--untie-head", action="store_true", help="untie the output head for the full step too")
    ap.add_argument("--beta", type=float, default=ProbeConfig.beta)
    ap.add_argument("--lr", type=float, default=ProbeConfig.lr, help="η of the SGD step")
    ap.add_argument("--modes", default="head_only,full", help="comma list of head_only, full")
    ap.add_argument("--no-chat-template", action="store_true")
    ap.add_argument("--batch-size", type=int, default=ProbeConfig.batch_size)
    ap.add_argument("--no-figure", action="store_true")
    add_model_args(ap)
    add_run_args(ap, None)
    args = ap.parse_args(argv)
    if (args.set is None) == (args.data is None):
        ap.error("give exactly one of: a built-in set (persona) or --data FILE")
    modes = parse_list(args.modes, ("head_only", "full"), "--modes")
    rewards = parse_list(args.rewards, tuple(REWARDS), "--rewards")
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
    if args.attention != "eager":
        raise ValueError("rmgap probe: --attention sdpa has no forward-mode autodiff; the probe needs eager")
    if args.dtype == "float64" and (why := float64_problem(args.device)):
        raise ValueError(f"--dtype float64 on {args.device}: {why}; use --dtype float32 or --device cpu")
    lm = lm or load_model(args, untie_head=args.untie_head)
    t_load = time.perf_counter() - t0
    cfg = replace(
        ProbeConfig(),
        beta=args.beta,
        lr=args.lr,
        chat_template=not args.no_chat_template,
        batch_size=args.batch_size,
        modes=modes,
        head_seed=args.seed if args.head_seed is None else args.head_seed,
        rewards=rewards,
        progress=not args.quiet,
    )
    res = run_probe(lm, data["train"], data["eval"], cfg, margin=data.get("margin"))
    res["summary"]["seconds"] = {"load": t_load, "probe": time.perf_counter() - t0 - t_load}
    res["summary"]["command"] = command_line("rmgap probe", argv)
    write_probe(res, out, figure=not args.no_figure)
    print_probe(res["summary"])
    print(f"wrote {out}/summary.json, records.csv" + ("" if args.no_figure else ", scatter.png"))
    return res["summary"]


# --- rmgap data --------------------------------------------------------------------------------------


def data_main(argv=None) -> list[dict]:
    """List the shipped datasets (name, split, rows, licence); --verify recomputes every checksum."""
    ap = parser("rmgap data", data_main.__doc__)
    ap.add_argument("--verify", action="store_true", help="check every file's SHA-256 against the manifest")
    ap.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = ap.parse_args(argv)
    entries = list(catalog())
    print(f"{'name':<26} {'split':<14} {'rows':>5}  licence")
    for e in entries:
        if args.verify:
            shipped_path(e["name"], e["split"])  # raises DataError on a mismatch
        print(f"{e['name']:<26} {e['split']:<14} {e['rows']:>5}  {e['licence']}")
    if args.verify:
        print(f"all {len(entries)} files match their SHA-256")
    print("details: lm_probes/datasets/README.md; load with lm_probes.data.load_pairs(name, split)")
    return entries
