"""Speed and memory of theory.dynamics.im_reward_change against a naive dense implementation and
against this machine's own matrix-product rate, measured in the same run.

    python benchmarks/dynamics_engine.py            # K = L ∈ {128, 512}, V ∈ {32k, 128k}, D ∈ {576, 2048}
    python benchmarks/dynamics_engine.py --quick    # the two smallest configurations only

For each configuration: time (best of --repeat) and peak extra memory (tracemalloc, which sees
every numpy buffer) of one call (one evaluation sequence of K tokens against y+ and y− of L
tokens each), of a batch (16 evaluation sequences of K/16 tokens, one call), and of the naive
implementation (dense softmax and one-hot K×V matrices, ρ = (Ē − P)(E − Q)ᵀ). GFLOP/s counts the
matrix-product work of the route taken; "of matmul" divides it by the rate of a square
np.matmul of the same dtype measured at start-up. Targets (issue 2): ≥ 50 % of the matmul rate at
the large sizes; ≤ 512 MiB peak extra memory at V = 128k.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import time
import tracemalloc

import numpy as np

from theory.dynamics import TokenStates, choose_route, im_reward_change, im_reward_change_batch

MiB = 2**20


def matmul_rate(dtype, n=2048, repeat=3) -> float:
    """GFLOP/s of an n×n @ n×n np.matmul (best of ``repeat``)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n)).astype(dtype), rng.standard_normal((n, n)).astype(dtype)
    a @ b
    best = min(_timed(lambda: a @ b)[1] for _ in range(repeat))
    return 2 * n**3 / best / 1e9


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _traced(fn):
    gc.collect()
    tracemalloc.start()
    try:
        out, dt = _timed(fn)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return out, dt, peak


def naive_im_reward_change(bar, plus, minus, *, beta, lr, g):
    """The textbook formula with dense (K, V) probability and one-hot matrices."""

    def e_minus_p(s):
        z = s.logits.astype(np.float64)
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        onehot = np.zeros_like(p)
        onehot[np.arange(s.n_tokens), s.tokens] = 1.0
        return onehot - p

    a = e_minus_p(bar)
    total = 0.0
    for side, sign in ((plus, 1.0), (minus, -1.0)):
        rho = a @ e_minus_p(side).T  # (K, L)
        total += sign * float((rho * (bar.hidden @ side.hidden.T)).sum())
    return lr * g * beta**2 * total


def route_flops(k, l_total, v, d) -> float:
    if choose_route(k, l_total, d) == "rho":
        return 2.0 * k * l_total * v + 2.0 * k * l_total * d
    return 2.0 * v * d * (l_total + k)


def make_states(rng, k, v, d, dtype):
    h = rng.standard_normal((k, d)).astype(dtype) / np.sqrt(d)
    logits = (3.0 * rng.standard_normal((k, v))).astype(dtype)
    return TokenStates(rng.integers(0, v, k), h, logits)


def bench_one(rng, k, v, d, dtype, rate, repeat, naive) -> dict:
    bar, plus, minus = (make_states(rng, k, v, d, dtype) for _ in range(3))
    kw = dict(beta=0.01, lr=1e-3, g=0.5)
    ours, _, peak = _traced(lambda: im_reward_change(bar, plus, minus, **kw))
    t = min(_timed(lambda: im_reward_change(bar, plus, minus, **kw))[1] for _ in range(repeat))
    flops = route_flops(k, 2 * k, v, d)
    bars = [TokenStates(bar.tokens[i::16], bar.hidden[i::16], bar.logits[i::16]) for i in range(16)]
    _, tb, peak_b = _traced(lambda: im_reward_change_batch(bars, plus, minus, **kw))
    row = dict(
        K=k,
        V=v,
        D=d,
        route=choose_route(k, 2 * k, d),
        seconds=t,
        gflops=flops / t / 1e9,
        frac_matmul=flops / t / 1e9 / rate,
        peak_mib=peak / MiB,
        batch_seconds=tb,
        batch_peak_mib=peak_b / MiB,
        naive_seconds=float("nan"),
        naive_peak_mib=float("nan"),
        rel_diff=float("nan"),
    )
    if naive:
        ref, row["naive_seconds"], naive_peak = _traced(
            lambda: naive_im_reward_change(bar, plus, minus, **kw)
        )
        row["naive_peak_mib"] = naive_peak / MiB
        row["rel_diff"] = abs(ours - ref) / abs(ref)
    print(
        f"{k:>5} {v:>7} {d:>5} {row['route']:>8} | {t:>7.2f} {row['gflops']:>8.1f} "
        f"{row['frac_matmul']:>8.0%} {row['peak_mib']:>8.0f} | {tb:>9.2f} {row['batch_peak_mib']:>8.0f} | "
        f"{row['naive_seconds']:>7.2f} {row['naive_peak_mib']:>8.0f} {row['rel_diff']:>8.1e}",
        flush=True,
    )
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="only the two smallest configurations")
    ap.add_argument("--repeat", type=int, default=2, help="timed repetitions (best is reported)")
    ap.add_argument("--no-naive", action="store_true", help="skip the dense baseline")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    dtype = np.float64
    rate = matmul_rate(dtype)
    print(f"machine matmul rate (float64, 2048^3): {rate:.1f} GFLOP/s\n")
    configs = list(itertools.product([128, 512], [32_000, 128_000], [576, 2048]))
    if args.quick:
        configs = configs[:2]
    hdr = (
        f"{'K=L':>5} {'V':>7} {'D':>5} {'route':>8} | {'ours s':>7} {'GFLOP/s':>8} {'of matmul':>9} "
        f"{'peak MiB':>8} | {'batch16 s':>9} {'peak MiB':>8} | {'naive s':>7} {'peak MiB':>8} {'rel.diff':>8}"
    )
    print(hdr)
    print("-" * len(hdr))
    rng = np.random.default_rng(args.seed)
    rows = [bench_one(rng, k, v, d, dtype, rate, args.repeat, not args.no_naive) for k, v, d in configs]
    return {"matmul_gflops": rate, "rows": rows}


if __name__ == "__main__":
    main()
