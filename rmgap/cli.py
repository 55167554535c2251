"""The ``rmgap`` console script (also ``python -m rmgap``).

rmgap simulate NAME [--quick ...]     run a simulation of simulations/ (same flags as the script)
rmgap simulate --list                 list the simulations
rmgap data [--verify]                 the datasets shipped with the package: name, split, rows, licence
rmgap probe persona | --data FILE     which responses one preference update moves (lm_probes.probe.one_step)
rmgap train --train FILE ...          train one reward model of any registered type (lm_probes.rm.trainer)
rmgap eval --model M --ref R ...      score existing LMs as implicit reward models (lm_probes.rm.existing)
rmgap transform --set NAME/SPLIT ...  token-level shifts of pairs, offline (lm_probes.data.transforms)
rmgap persona --preset cpu|paper      the Persona experiment (rmgap.experiments.persona)
rmgap shifts --preset cpu|paper       token-level and domain shifts (rmgap.experiments.shifts)
rmgap hamiltonian --preset cpu|paper  verification without generation (rmgap.experiments.hamiltonian)
rmgap robustness --preset cpu|paper   EX-RM vs IM-RM under token-level shifts (rmgap.experiments.robustness)
rmgap mitigations --preset cpu|paper  IM-RM fixes, predicted and trained (rmgap.experiments.mitigations)
rmgap bench NAME [...]                (source checkout) run a benchmark script of benchmarks/

An error in the input ends a command with one line, ``rmgap <command>: error: <what>``, and exit
status 2; ``--debug`` (or RMGAP_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import runpy
import sys
from pathlib import Path

import simulations

COMMANDS = {  # command → (module, function, help)
    "data": ("rmgap.commands.data", "main", "list the shipped datasets (rmgap data -h)"),
    "probe": ("rmgap.commands.probe", "main", "reward-dynamics probe on a real LM (rmgap probe -h)"),
    "train": ("rmgap.commands.train", "main", "train a reward model (rmgap train -h)"),
    "export": (
        "rmgap.commands.export",
        "main",
        "save a finished training run in the Hugging Face format (rmgap export -h)",
    ),
    "eval": (
        "rmgap.commands.eval",
        "main",
        "score existing LMs as implicit RMs, no training (rmgap eval -h)",
    ),
    "transform": ("rmgap.commands.transform", "main", "shift pairs to other tokens, same meaning (offline)"),
    "persona": ("rmgap.experiments.persona", "main", "the Persona token-level-shift experiment"),
    "shifts": ("rmgap.experiments.shifts", "main", "real-world token-level and domain shifts"),
    "hamiltonian": ("rmgap.experiments.hamiltonian", "main", "verification without generation (cycles)"),
    "robustness": (
        "rmgap.experiments.robustness",
        "main",
        "EX-RM vs IM-RM under offline token-level shifts, with seeds",
    ),
    "mitigations": (
        "rmgap.experiments.mitigations",
        "main",
        "IM-RM mitigations: one-step prediction vs training",
    ),
}


# the commands that share their work over processes (lm_probes.distributed); probe and data run in one
DISTRIBUTED = ("train", "eval", "persona", "shifts", "hamiltonian", "mitigations")


def _simulation_names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(simulations.__path__) if not m.name.startswith("_"))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 500 else text[:497] + "..."


def _input_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that describe bad input or settings (their message is the whole story)."""
    from theory.max_margin import NotSeparableError

    # ImportError: a missing optional dependency (e.g. transformers without the `lm` extra)
    errors: list[type[BaseException]] = [
        ValueError,
        FloatingPointError,
        OSError,
        ImportError,
        NotSeparableError,
    ]
    try:
        from lm_probes.lm.scoring import HeadMismatchError

        errors.append(HeadMismatchError)
    except ImportError:  # pragma: no cover - torch/transformers missing
        pass
    return tuple(errors)


def run_command(name: str, fn, argv: list[str], debug: bool = False) -> int:
    """Run ``fn(argv)``; an exception becomes one line on stderr and exit status 2 (1 for a bug),
    unless ``debug``, --debug in ``argv`` or RMGAP_DEBUG=1 asks for the traceback."""
    debug = debug or "--debug" in argv or os.environ.get("RMGAP_DEBUG", "") not in ("", "0")
    try:
        fn(argv)
    except KeyboardInterrupt:
        print(f"rmgap {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        if isinstance(exc, _input_errors()):
            print(f"rmgap {name}: error: {_one_line(exc)}", file=sys.stderr)
            return 2
        print(
            f"rmgap {name}: error: {type(exc).__name__}: {_one_line(exc)} "
            "(an internal error: rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from rmgap.flags import Parser

    ap = Parser(
        prog="rmgap",
        description="EX-RM vs IM-RM: theory, simulations and probes",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    sim = sub.add_parser("simulate", help="run a simulation from simulations/ (extra flags go to it)")
    sim.add_argument("name", nargs="?", help=f"one of: {', '.join(_simulation_names()) or '(none yet)'}")
    sim.add_argument("--list", action="store_true", help="list the simulations and exit")
    for name, (_, _, text) in COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)
    bench = sub.add_parser("bench", help="run a benchmark script from benchmarks/ (source checkout only)")
    bench.add_argument("name")
    if argv[:1] and argv[0] in COMMANDS:
        module, fn, _ = COMMANDS[argv[0]]
        from lm_probes.distributed import launched_processes

        if argv[0] not in DISTRIBUTED and launched_processes() > 1:
            print(
                f"rmgap {argv[0]}: error: runs in one process (launched with "
                f"{launched_processes()}); under accelerate: {', '.join(DISTRIBUTED)}",
                file=sys.stderr,
            )
            return 2
        try:
            return run_command(argv[0], lambda a: getattr(importlib.import_module(module), fn)(a), argv[1:])
        finally:
            from lm_probes.distributed import shutdown

            shutdown()
    args, rest = ap.parse_known_args(argv)
    if args.cmd == "simulate":
        names = _simulation_names()
        if args.list or not args.name:
            print("\n".join(names) if names else "(no simulations yet)")
            return 0
        if args.name not in names:
            ap.error(f"unknown simulation {args.name!r}; choose from {names}")
        fn = importlib.import_module(f"simulations.{args.name}").main
        return run_command("simulate", fn, [a for a in rest if a != "--debug"], debug="--debug" in rest)
    if args.cmd == "bench":
        path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{args.name}.py"
        if not path.exists():
            ap.error(f"no benchmark {path} (benchmarks live in the source checkout)")
        sys.argv = [str(path), *rest]
        runpy.run_path(str(path), run_name="__main__")
        return 0
    return 2  # pragma: no cover


if __name__ == "__main__":
    raise SystemExit(main())
