"""Training at the paper's scale on CPU: a few Adam steps of the IM-RM and the EX-RM on a model with
Llama-3.2-1B's shapes and random weights (benchmarks/probe_1b.py builds it: 1.24 B parameters,
float32), tokens/s against the machine's limit for the same work, measured in one run.

    python benchmarks/train_1b.py --micro-batch 2 --json benchmarks/results/train_1b.json
    python benchmarks/train_1b.py --micro-batch 2 --scoring whole \\
        --json benchmarks/results/train_1b_scoring-whole.json
    python benchmarks/train_1b.py --shape tiny --steps 2                      # the same code, small (tests)

The steps are what lm_probes.rm.trainer runs: micro-batches of ``--micro-batch`` Persona training
pairs (length-bucketed), each a forward and backward, and an Adam update of every parameter after
every ``--accumulate`` of them (4: the Persona paper preset's 32-pair batch in micro-batches of 8);
the IM-RM's reference log-probs are filled once before, not timed. One micro-batch (with an update)
warms up; ``--steps`` micro-batches are timed. At 1B on a 23.5 GiB machine micro-batches of 8 were
seen to run out of memory (weights, gradients and Adam's moments take 18.4 GiB): ``--micro-batch 2``.
"of limit" is the share of their time that the steps' own matrix products take when each is run alone at its
shape, best of 5 (benchmarks/_limit.py): at most 100 % by construction. GFLOP/s counts
lm_probes.common.train_flops (6 · N_body per token, 6 · N_head per response position for the
IM-RM) plus the attention scores, on the tokens the model ran (``tokens_run``: a prompt shared by a
micro-batch's pairs runs once, lm_probes.lm.scoring's cached mode; tokens/s counts every sequence
whole); ``flop_check`` divides that count by the FLOPs of the products (recorded by a dispatch mode
on a second pass over the same batches). Target (issue
26): ≥ 50 % of the limit. Peak resident memory (ru_maxrss) covers the weights, their gradients and
Adam's two moments (≈ 4 × 4.9 GB at 1B), plus activations.

``--scoring whole`` runs whole sequences instead of scoring's ``auto`` choice, which for these pairs
is the cached mode (each prompt once). The cached mode uses every weight in two passes; before
lm_probes.lm.into_grad, autograd held the first pass's gradient beside ``.grad`` until the second's
arrived (2.9–3.6 GiB more per later micro-batch at 1B, EX-RM / IM-RM: benchmarks/into_grad.py), and
at 1B on a 23.5 GiB machine it was seen to run out of memory where whole sequences fit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _limit import bucketed_batches, provenance, scoring_forced, share_of_limit, step_flops, training_steps
from probe_1b import SHAPES, build, peak_gib

TARGET = 0.50  # of the limit


def run_objective(lm, objective: str, pairs, micro: int, steps: int, timed=None, accumulate: int = 1) -> dict:
    from lm_probes.data.pairs import encode_pairs
    from lm_probes.rm.config import TrainConfig
    from lm_probes.rm.reward_model import RewardModel

    rm = RewardModel(lm, TrainConfig(objective=objective, lr=1e-6, progress=False))
    batches = bucketed_batches(rm, encode_pairs(lm.tokenizer, pairs).encodings, micro, steps)
    seq = [e for b in batches[1:] for p in b for e in p]
    tokens = sum(len(e.input_ids) for e in seq)
    report = timed and (lambda sec: timed(objective, tokens, sec))
    run = training_steps(rm, batches, lr=1e-6, timed=report, accumulate=accumulate)
    flops = sum(step_flops(lm, objective, seq, run["tokens_run"]))
    out = {"objective": objective, "micro_batches": steps, "accumulate": accumulate, "sequences": len(seq)}
    out |= {"tokens": tokens, "tokens_run": run["tokens_run"].grad}  # (a shared prompt runs once)
    out["fused_adam"] = run["fused_adam"]
    out |= {"tokens_per_s": tokens / run["seconds"], **share_of_limit(run["seconds"], run["limit"], flops)}
    for p in rm.model.parameters():  # free the gradients before the next objective
        p.grad = None
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    ap.add_argument("--steps", type=int, default=4, help="timed micro-batches per objective")
    ap.add_argument("--micro-batch", type=int, default=8, help="pairs per forward/backward")
    ap.add_argument("--accumulate", type=int, default=4, help="micro-batches per Adam update (paper: 32 / 8)")
    ap.add_argument("--scoring", choices=("auto", "whole"), default="auto", help="whole: no shared prompts")
    ap.add_argument("--json", type=Path, help="write the result here")
    args = ap.parse_args(argv)
    with scoring_forced(args.scoring):
        return _run(args, argv)


def _run(args, argv) -> dict:
    from lm_probes.data.persona import persona_data

    lm = build(args.shape)
    pairs = persona_data(n_train=80, n_test=40, pairs_per_statement=2)["train"]
    n = lm.info["n_parameters"]
    print(f"{lm.info['model']}: {n / 1e9:.3f} B parameters, {torch.get_num_threads()} threads")
    rows = {}

    def timed(obj, tokens, sec):  # (kept in the JSON before the profiling pass, which may run out of memory)
        rows[obj] = {"tokens": tokens, "work_seconds": sec, "tokens_per_s": tokens / sec, "limit": None}
        print(f"  {obj}: {tokens} tokens in {sec:.1f} s = {tokens / sec:.1f} tok/s (timed steps)", flush=True)
        if args.json:
            from lm_probes.common import write_json

            write_json(args.json, {"shape": args.shape, "rows": rows, "partial": True})

    for obj in ("im_rm", "ex_rm"):
        r = rows[obj] = run_objective(lm, obj, pairs, args.micro_batch, args.steps, timed, args.accumulate)
        print(
            f"  {obj}: {r['tokens']} tokens in {r['work_seconds']:.1f} s = {r['tokens_per_s']:.1f} tok/s, "
            f"{r['formula_gflops']:.1f} GFLOP/s; its matrix products alone take {100 * r['of_limit']:.0f} % "
            f"of its time (limit {r['limit_gflops']:.1f} GFLOP/s; target ≥ {100 * TARGET:.0f} %)"
            f"{' LIMIT BEATEN' if r['limit_beaten'] else ''}; FLOP formula / profiled {r['flop_check']:.4f}",
            flush=True,
        )
    out = {
        "shape": args.shape,
        "n_parameters": lm.info["n_parameters"],
        "threads": torch.get_num_threads(),
        "micro_batch": args.micro_batch,
        "accumulate": args.accumulate,
        "scoring": args.scoring,
        "rows": rows,
        "peak_gib": peak_gib(),
        "target_of_limit": TARGET,
        "meets": {o: r["of_limit"] >= TARGET for o, r in rows.items()},
        "command": "python benchmarks/train_1b.py " + " ".join(sys.argv[1:] if argv is None else argv),
        **provenance(),
    }
    print(f"  peak resident memory {out['peak_gib']:.1f} GiB")
    if args.json:
        from lm_probes.common import write_json

        write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
