"""Time of one Adam step on CPU, three ways, measured in one run: torch's default on CPU (a loop over
parameters of element-wise ops: ``foreach=False``), ``foreach=True``, and ``fused=True`` (the one-pass
kernel lm_probes.rm.trainer.adam picks where torch has one). Same parameters, gradients and moments.

    python benchmarks/adam.py --json benchmarks/results/adam.json   # 302 M parameters (18 × 8192 × 2048)
    python benchmarks/adam.py --matrices 2                           # small (tests)

Each way: a fresh optimizer on the same start (one step made first, so that the moments exist), then
the best of ``--repeat`` steps; after them, the parameters' largest difference from the default way's,
relative to their largest size (the same 1 + --repeat steps from the same start). The 1B-shaped model
(1.24 B parameters) is 4.1× these; the time scales with the parameters (every step reads and writes
each one and its moments).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _limit import provenance

WAYS = {"default (for-loop)": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}


def one_way(start: list, grads: list, kw: dict, repeat: int) -> tuple[float, list]:
    params = [torch.nn.Parameter(p.clone()) for p in start]
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    opt = torch.optim.Adam(params, lr=1e-3, **kw)
    opt.step()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        opt.step()
        best = min(best, time.perf_counter() - t0)
    return best, [p.detach() for p in params]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--matrices", type=int, default=18, help="8192 × 2048 parameter matrices")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(8192, 2048, generator=gen) * 0.02 for _ in range(args.matrices)]
    grads = [torch.randn(8192, 2048, generator=gen) * 1e-3 for _ in range(args.matrices)]
    n = sum(p.numel() for p in start)
    print(f"{n / 1e6:.0f} M parameters, {torch.get_num_threads()} threads, torch {torch.__version__}")
    rows, ref = {}, None
    for name, kw in WAYS.items():
        sec, final = one_way(start, grads, kw, args.repeat)
        ref = ref or final
        scale = max(float(r.abs().max()) for r in ref)
        diff = max(float((a - b).abs().max()) for a, b in zip(final, ref, strict=True)) / scale
        rows[name] = {"seconds_per_step": sec, "max_rel_diff_from_default": diff}
        print(f"  {name:>18}: {sec:.3f} s per step; largest parameter difference from default {diff:.1e}")
        del final
    base = rows["default (for-loop)"]["seconds_per_step"]
    command = "python benchmarks/adam.py " + " ".join(sys.argv[1:] if argv is None else argv)
    out = {"parameters": n, "threads": torch.get_num_threads(), "torch": torch.__version__, "rows": rows}
    out |= {"fused_speedup": base / rows["fused"]["seconds_per_step"], "command": command, **provenance()}
    print(f"  fused takes 1/{out['fused_speedup']:.1f} of the default's time")
    if args.json:
        from lm_probes.common import write_json

        write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
