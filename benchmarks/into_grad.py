"""What routing each use's gradient into .grad (lm_probes.lm.into_grad) saves in memory: the peak
resident memory of training micro-batches on a model of Llama-3.2-1B's shapes (benchmarks/probe_1b.py),
in scoring's cached and whole modes, routing off and on, each configuration in a fresh process.

    python benchmarks/into_grad.py --json benchmarks/results/into_grad.json
    python benchmarks/into_grad.py --shape tiny --micro-batches 2 --objectives im_rm    # (tests)

Each process builds the model, then runs ``--micro-batches`` micro-batches of ``--micro-batch`` Persona
training pairs (bucketed as benchmarks/train_1b.py does; the IM-RM's reference log-probs filled
before), a forward and a backward each, adding into the gradients as the trainer does between Adam
updates (no update: Adam's two moments, the same in every configuration, 9.9 GB at 1B, are left out;
the weights are in every peak). The peak is the kernel's high-water mark of the resident set (VmHWM), reset
before each micro-batch (/proc/self/clear_refs), with glibc's mmap threshold fixed at 128 KiB so
that a freed tensor leaves the resident set at once: the peak is the live memory's. Reported per
configuration: the first micro-batch's peak (no .grad yet: routing hands its gradients to autograd
as before) and the largest of the later ones (adding into .grad), in GiB, and the gradient's norm
after the last, which routing must not change (checked to 1e-5).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probe_1b import SHAPES

MODES = ("cached", "whole")
CONFIGS = [(mode, routed) for mode in MODES for routed in (False, True)]
MALLOC = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def _hwm_gib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(shape: str, objective: str, mode: str, routed: bool, micro: int, n: int) -> dict:
    """One configuration, in this process: the peaks of its micro-batches and the gradient's norm."""
    import torch
    from _limit import bucketed_batches, scoring_forced
    from probe_1b import build

    from lm_probes.data.pairs import encode_pairs
    from lm_probes.data.persona import persona_data
    from lm_probes.lm import into_grad
    from lm_probes.rm.config import TrainConfig
    from lm_probes.rm.reward_model import RewardModel

    lm = build(shape)
    pairs = persona_data(n_train=80, n_test=40, pairs_per_statement=2)["train"]
    rm = RewardModel(lm, TrainConfig(objective=objective, lr=1e-6, progress=False))
    batches = bucketed_batches(rm, encode_pairs(lm.tokenizer, pairs).encodings, micro, n - 1)
    peaks = []
    into_grad.ENABLED = routed
    with scoring_forced(mode):
        for b in batches:
            Path("/proc/self/clear_refs").write_text("5")
            rm.batch_loss(b).backward()
            peaks.append(_hwm_gib())
    norm = torch.sqrt(sum(p.grad.double().pow(2).sum() for p in rm.model.parameters() if p.grad is not None))
    return {"peaks_gib": peaks, "grad_norm": float(norm)}


def run(shape: str, objective: str, micro: int, n: int) -> dict:
    """The four configurations of ``objective``, each in a fresh process → rows and what routing saves."""
    rows = {}
    for mode, routed in CONFIGS:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            shape,
            objective,
            mode,
            str(int(routed)),
            str(micro),
            str(n),
        ]
        out = subprocess.run(cmd, env=os.environ | MALLOC, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(
                f"into_grad: {objective} {mode} routed={routed} failed: {out.stderr.strip()[-400:]}"
            )
        got = json.loads(out.stdout.strip().splitlines()[-1])
        peaks = got["peaks_gib"]
        rows[f"{mode}, routing {'on' if routed else 'off'}"] = {
            "mode": mode, "routed": routed, "first_peak_gib": peaks[0], "later_peak_gib": max(peaks[1:]),
            "peaks_gib": peaks, "grad_norm": got["grad_norm"],
        }  # fmt: skip
    saved = {}
    for mode in MODES:
        off, on = rows[f"{mode}, routing off"], rows[f"{mode}, routing on"]
        if abs(on["grad_norm"] - off["grad_norm"]) > 1e-5 * off["grad_norm"]:
            raise SystemExit(f"into_grad: {objective} {mode}: routing changed the gradient ({off} vs {on})")
        saved[mode] = off["later_peak_gib"] - on["later_peak_gib"]
    return {"rows": rows, "later_peak_saved_gib": saved}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    ap.add_argument("--objectives", default="im_rm,ex_rm", help="comma-separated reward types")
    ap.add_argument("--micro-batch", type=int, default=2, help="pairs per forward/backward (train_1b's)")
    ap.add_argument("--micro-batches", type=int, default=3, help="per configuration (≥ 2)")
    ap.add_argument("--json", type=Path, help="write the result here")
    ap.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        shape, objective, mode, routed, micro, n = args.child
        print(json.dumps(child(shape, objective, mode, routed == "1", int(micro), int(n))))
        return {}
    if args.micro_batches < 2:
        raise SystemExit("into_grad: --micro-batches must be ≥ 2 (the later ones add into .grad)")
    if not Path("/proc/self/clear_refs").exists():
        raise SystemExit("into_grad: needs Linux's /proc/self/clear_refs to reset the peak")
    result = {"shape": args.shape, "micro_batch": args.micro_batch, "micro_batches": args.micro_batches}
    result["objectives"] = {}
    for objective in args.objectives.split(","):
        got = result["objectives"][objective] = run(
            args.shape, objective, args.micro_batch, args.micro_batches
        )
        for name, r in got["rows"].items():
            first, later = r["first_peak_gib"], r["later_peak_gib"]
            print(f"{objective} {name:20s} first {first:6.2f} GiB  later {later:6.2f} GiB")
        print(f"{objective} routing saves (later micro-batches): " +
              ", ".join(f"{m} {s:.2f} GiB" for m, s in got["later_peak_saved_gib"].items()))  # fmt: skip
    result["command"] = "python benchmarks/into_grad.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    if args.json:
        from lm_probes.common import write_json

        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
