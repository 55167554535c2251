"""The flags the commands share, and the one translation of a command line into a training config.

    ap = parser("rmgap X", __doc__)
    add_model_args(ap); add_run_args(ap, "runs/x"); add_preset_args(ap, PRESETS)
    args = ap.parse_args(argv)
    cfg = train_config(args, **preset["train"], objective="im_rm")   # a lm_probes.rm.config.TrainConfig
    runtime, lm_factory = model_factory(args)

Errors in the input (a bad row, a missing file, a sequence longer than the context, …) end the
command with one line, ``rmgap <command>: error: <file:line: what>``, and exit status 2 (rmgap.cli).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from lm_probes.data.formats import read_pairs
from lm_probes.data.pairs import DataError, load_pairs
from lm_probes.rm.config import TrainConfig

DTYPES = ("float32", "float64", "bfloat16")


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (``<prog>: error: <what> (<prog> -h for the flags)``, exit 2, no
    usage block) and negative numbers as values (``--lr -1e-3``, which argparse takes for a flag)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} ({self.prog} -h for the flags)\n")

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(self._join_negative_values(args), namespace)

    def _join_negative_values(self, args: list[str]) -> list[str]:
        out, i = [], 0
        while i < len(args):
            a = args[i]
            action = self._option_string_actions.get(a)
            takes_one = action is not None and action.nargs is None and action.option_strings
            if takes_one and i + 1 < len(args) and NEGATIVE.match(args[i + 1]):
                out.append(f"{a}={args[i + 1]}")
                i += 2
                continue
            out.append(a)
            i += 1
        return out


NEGATIVE = re.compile(r"^-(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$|^-(inf|nan)$", re.IGNORECASE)


def parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    return Parser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


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


def add_folder_args(ap: argparse.ArgumentParser, resume: bool) -> None:
    """--overwrite (and, where the command continues a run, --resume): what a non-empty --out needs."""
    if resume:
        ap.add_argument(
            "--resume", action="store_true", help="continue the run in --out (from its checkpoint)"
        )
    ap.add_argument(
        "--overwrite", action="store_true", help="replace the run in --out (its files are deleted)"
    )


def claim_out(args, outputs: tuple[str, ...], needs: str | None = None):
    """--out claimed for this run before the model loads (lm_probes.common.claim_folder; by the main
    process of a launch alone), after --device and a local --model are checked; with --resume,
    ``needs`` (a file) must be there to continue from."""
    from lm_probes.common import claim_folder
    from lm_probes.lm.loading import check_device, check_source

    check_device(args.device)  # (the model flags too, before anything is written)
    if args.model != "smollm2":
        check_source(args.model)
    resume = getattr(args, "resume", False)
    if resume and args.overwrite:
        raise ValueError("--resume and --overwrite: give one")
    if resume and needs and not (args.out / needs).is_file():
        raise ValueError(
            f"--out {args.out}: --resume, but nothing to resume (no {needs}); --overwrite starts over"
        )
    if int(os.environ.get("RANK", "0")) != 0:  # (another process of a launch: the main one claims; a
        return args.out  # check here would race with what the main one has begun to write)
    return claim_folder(args.out, outputs, resume=resume, overwrite=args.overwrite)


def parse_list(text: str, allowed, what: str) -> tuple[str, ...]:
    """ "a,b" → ("a", "b"), each checked against ``allowed``."""
    items = tuple(x.strip() for x in text.split(",") if x.strip())
    bad = [x for x in items if x not in allowed]
    if bad or not items:
        raise ValueError(f"{what}: {', '.join(bad) or '(none)'} not among {', '.join(allowed)}")
    return items


def parse_seeds(text: str) -> list[int]:
    """ "0,1,2" → [0, 1, 2]; distinct integers, else a one-line error."""
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--seeds takes comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds takes distinct integers, got {text!r}")
    return seeds


def command_line(prog: str, argv) -> str:
    """The command as typed, for the outputs' record: ``prog`` + the arguments."""
    return " ".join([prog, *(sys.argv[1:] if argv is None else argv)])


def add_preset_args(ap: argparse.ArgumentParser, presets: dict) -> None:
    """--preset (default cpu), and --epochs / --lr, which override the preset's; --lora."""
    ap.add_argument("--preset", choices=sorted(presets), default="cpu")
    ap.add_argument("--epochs", type=int, help="override the preset")
    ap.add_argument("--lr", type=float, help="override the preset")
    add_lora_arg(ap)


def add_lora_arg(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--lora",
        metavar="R,ALPHA,TARGETS",
        help="train LoRA adapters (peft) on these modules, base weights frozen: e.g. 8,16,q_proj+v_proj "
        "or 16,32,all-linear (lm_probes.rm.lora)",
    )


def lora_text(args) -> str | None:
    """--lora in its one normal form (so that a resume compares like with like), or None."""
    from lm_probes.rm.lora import parse_lora

    text = getattr(args, "lora", None)
    return None if text is None else parse_lora(text).text()


def preset_overrides(args) -> dict:
    """The training fields --epochs / --lr set, where the command has them and they were given."""
    given = ((k, getattr(args, k, None)) for k in ("epochs", "lr"))
    return {k: v for k, v in given if v is not None}


def train_config(args, **fields) -> TrainConfig:
    """The command line as a TrainConfig: ``fields`` (a preset's training fields, the command's own),
    then --epochs / --lr where given, --lora, --seed, --head-seed and --quiet. Every command builds its
    configs here."""
    fields.update(preset_overrides(args))
    fields.setdefault("lora", lora_text(args))
    cfg = TrainConfig(**fields, seed=args.seed, head_seed=args.head_seed, progress=not args.quiet)
    if cfg.epochs < 1:  # (a command that trains nothing is a mistake; the library allows 0: θ₀ only)
        raise ValueError(f"epochs (--epochs) must be an integer ≥ 1, got {cfg.epochs}")
    cfg.check()  # (every setting in range before any work: one line naming the flag)
    return cfg


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
    """The LM named by --model/--device/--dtype (lm_probes.lm.loading.load_lm), on this process's device
    when several processes share the work (``runtime``)."""
    from lm_probes.lm.loading import load_lm

    device = str(runtime.device) if runtime is not None and runtime.device is not None else args.device
    quiet = getattr(args, "quiet", False)
    return load_lm(args.model, device=device, dtype=args.dtype, attention=args.attention, quiet=quiet, **kw)


def named_set(spec: str, flag: str, shipped: bool | None = None) -> tuple[str, str]:
    """ "NAME=VALUE" → (NAME, VALUE); a bare VALUE is named after it: a file by its stem
    ("dir/test.jsonl" → "test"), a shipped dataset (``shipped``; default: ``flag`` is --eval-set) by
    name and split ("rewardmath/test" → "rewardmath_test"), so that two unnamed datasets never share a
    name."""
    shipped = flag == "--eval-set" if shipped is None else shipped
    name, sep, value = spec.partition("=")
    if not sep:
        name, value = ((spec.replace("/", "_") if shipped else Path(spec).name.split(".")[0]), spec)
    if not name or not value:
        raise ValueError(f"{flag} takes NAME=VALUE, got {spec!r}")
    return name, value


def named_sets(files: list[str], shipped: list[str], flags_: tuple[str, str], reserved=()) -> dict:
    """The pairs of every ``[NAME=]FILE`` (``files``) and ``[NAME=]name/split`` (``shipped``), by name;
    ``flags_`` names the two flags in messages; a name given twice or in ``reserved`` is refused."""
    sets = {}
    for spec, flag, is_shipped in [(s, flags_[0], False) for s in files] + [
        (s, flags_[1], True) for s in shipped
    ]:
        name, value = named_set(spec, flag, is_shipped)
        if name in sets or name in reserved:
            why = "reserved (a history key)" if name in reserved else "already another set's"
            raise ValueError(f"{flag} {spec}: the name {name!r} is {why}; name each set once (NAME=...)")
        sets[name] = shipped_pairs(value, name) if is_shipped else read_pairs(value, group=name)
    return sets


def shipped_pairs(spec: str, group: str):
    """ "name/split" of a shipped dataset → its pairs."""
    name, sep, split = spec.partition("/")
    if not sep:
        raise DataError(f"{spec!r}: a shipped dataset is named <name>/<split> (see `rmgap data`)")
    return load_pairs(name, split, group=group)
