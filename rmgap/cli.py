"""The ``rmgap`` console script.

rmgap simulate single_token [--quick ...]   run a simulation script (same flags as the script)
rmgap simulate --list                       list the simulations
rmgap bench dynamics_engine [--quick]       (from a source checkout) run a benchmark
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import runpy
import sys
from pathlib import Path

import simulations


def _simulation_names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(simulations.__path__) if not m.name.startswith("_"))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="rmgap", description="EX-RM vs IM-RM theory, simulations and probes")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sim = sub.add_parser("simulate", help="run a simulation from simulations/ (extra flags go to it)")
    sim.add_argument("name", nargs="?", help=f"one of: {', '.join(_simulation_names()) or '(none yet)'}")
    sim.add_argument("--list", action="store_true", help="list the simulations and exit")
    sub.add_parser("probe", help="reward-dynamics probe on a real LM (rmgap probe -h)", add_help=False)
    sub.add_parser("train", help="train an EX-RM or IM-RM on JSONL data (rmgap train -h)", add_help=False)
    sub.add_parser(
        "persona", help="the Persona token-level-shift experiment (rmgap persona -h)", add_help=False
    )
    bench = sub.add_parser("bench", help="run a benchmark script from benchmarks/ (source checkout only)")
    bench.add_argument("name")
    if argv[:1] == ["probe"]:
        from lm_probes.probe_cli import main as probe_main

        probe_main(argv[1:])
        return 0
    if argv[:1] == ["train"]:
        from lm_probes.train import main as train_main

        train_main(argv[1:])
        return 0
    if argv[:1] == ["persona"]:
        from lm_probes.persona_experiment import main as persona_main

        persona_main(argv[1:])
        return 0
    args, rest = ap.parse_known_args(argv)

    if args.cmd == "simulate":
        names = _simulation_names()
        if args.list or not args.name:
            print("\n".join(names) if names else "(no simulations yet)")
            return 0
        if args.name not in names:
            ap.error(f"unknown simulation {args.name!r}; choose from {names}")
        importlib.import_module(f"simulations.{args.name}").main(rest)
        return 0
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
