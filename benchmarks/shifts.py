"""Speed of ``rmgap shifts`` on SmolLM2-135M-Instruct (CPU, float32), all measured in one run
(``--no-training``: part 1 only):

1. Evaluation with and without pooling the sets. The UltraFeedback test set and its three rewrites
   share prompts; lm_probes.rm.evaluation.evaluate_sets pools the sets, scores each distinct (prompt,
   response) once and runs each prompt once, expanding its KV cache over all its responses. "Alone"
   evaluates each set on its own: its two responses per prompt share the prompt where scoring's
   "auto" rule takes the cached mode (lm_probes.lm.scoring.shared_prompt_gain ≥ SHARE_GAIN; from
   2026-12-07; before, whole sequences), so where it does the ratio is what pooling adds. Same pairs,
   same IM-RM (the one
   that needs logits), same reference table; tokens/s counts every pair's two whole sequences, so
   both sides do the same useful work. Best of two alternating repetitions. Target (issue 10): ≥ 1.3×.
2. Training throughput on these lengths against the machine's limit for the same work: a few
   micro-batches (2 pairs, length-bucketed as training does; an Adam update every 4, the cpu
   preset's batch of 8) of UltraFeedback pairs for the EX-RM and the IM-RM. "of limit" is the
   share of the steps' time that their own matrix products take when each is run alone at its
   shape, best of 5 (benchmarks/_limit.py): at most 100 % by
   construction. tokens/s counts the sequences' tokens; ``tokens_run`` those the model ran (a prompt
   shared by a micro-batch's responses runs once: lm_probes.lm.scoring's cached mode, taken by the
   same "auto" rule). GFLOP/s counts lm_probes.common.train_flops on the tokens run;
   ``flop_check`` divides it, plus the attention scores (attention_flops), by the FLOPs of the
   recorded products. Target: ≥ 60 %
   of the limit. Three conditions, in this order, same
   batches: ``padded`` (each micro-batch one padded batch, as before issue 10's fix), ``split``
   (lm_probes.lm.scoring.length_groups: sub-batches that waste ≤ 20 % on padding) and ``split+malloc``
   (lm_probes.common.tune_malloc, which training calls; process-wide, so measured last). Minor page
   faults per step are reported beside. ``--attention sdpa`` (or ``both``) measures PyTorch's fused
   attention (``load_lm(attention="sdpa")``, ``--attention sdpa`` on the commands) instead of the
   default eager attention, which keeps the probe's float64 / forward-mode path.

    python benchmarks/shifts.py --json benchmarks/results/shifts.json
    python benchmarks/shifts.py --quick
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lm_probes.common import matmul_rate, tune_malloc, write_json
from lm_probes.data.pairs import encode_pairs
from lm_probes.lm import scoring
from lm_probes.lm.loading import load_lm
from lm_probes.rm.config import TrainConfig
from lm_probes.rm.evaluation import evaluate_sets
from lm_probes.rm.reward_model import RewardModel
from rmgap.experiments.shifts import PRESETS, UF_FAMILY, shift_data

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _limit import bucketed_batches, share_of_limit, step_flops, training_steps


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def sharing(lm, n_pairs: int) -> dict:
    preset = dict(PRESETS["cpu"], n_eval=n_pairs)
    data = shift_data(lm.tokenizer, "ultrafeedback", preset, seed=0, max_length=lm.info["max_positions"])
    ev = {n: encode_pairs(lm.tokenizer, data.eval[n], max_part_length=512).encodings for n in UF_FAMILY}
    rm = RewardModel(lm, TrainConfig(objective="im_rm"))
    rm.fill_eval_reference(ev)
    for n in UF_FAMILY:  # the reference in the chunks of the one-set evaluations too
        rm.fill_eval_reference({n: ev[n]})
    tokens = sum(len(c.input_ids) + len(r.input_ids) for v in ev.values() for c, r in v)
    distinct = {e.input_ids for v in ev.values() for p in v for e in p}
    shared, alone = [], []
    for _ in range(2):
        shared.append(_timed(lambda: evaluate_sets(rm, ev)))
        alone.append(_timed(lambda: [evaluate_sets(rm, {n: v}) for n, v in ev.items()]))
    res = {
        "pairs": sum(len(v) for v in ev.values()),
        "tokens": tokens,
        "distinct_sequences": len(distinct),
        "shared_seconds": min(shared),
        "alone_seconds": min(alone),
        "shared_tokens_per_s": tokens / min(shared),
        "alone_tokens_per_s": tokens / min(alone),
    }
    res["speedup"] = res["alone_seconds"] / res["shared_seconds"]
    # the most sharing can save, in tokens run through the model, if each set alone runs each of its
    # prompts once (its two responses share it; where "auto" runs a set alone whole, more can be
    # saved), pooled runs each prompt once for all four sets
    prompts = {e.input_ids[: e.prompt_len] for v in ev.values() for p in v for e in p}
    alone_work = sum(
        sum(len(q) for q in {e.input_ids[: e.prompt_len] for p in v for e in p})
        + sum(e.response_len for p in v for e in p)
        for v in ev.values()
    )
    shared_work = sum(len(q) for q in prompts) + sum(
        e.response_len for v in ev.values() for p in v for e in p
    )
    res["mean_prompt_tokens"] = float(np.mean([len(q) for q in prompts]))
    res["token_ceiling"] = alone_work / shared_work
    return res


def training(lm, objective: str, n_steps: int) -> dict:
    preset = dict(PRESETS["cpu"], n_eval=1)
    data = shift_data(lm.tokenizer, "ultrafeedback", preset, seed=0, max_length=lm.info["max_positions"])
    rm = RewardModel(lm, TrainConfig(objective=objective, lr=1e-5, progress=False))
    train = PRESETS["cpu"]["train"]
    encs = encode_pairs(lm.tokenizer, data.train, max_part_length=512).encodings
    batches = bucketed_batches(rm, encs, train["micro_batch"], n_steps)
    run = training_steps(rm, batches, lr=1e-5, accumulate=train["batch_size"] // train["micro_batch"])
    sec, seq = run["seconds"], [e for b in batches[1:] for p in b for e in p]
    tokens = sum(len(e.input_ids) for e in seq)
    flops, att = step_flops(lm, objective, seq, run["tokens_run"])
    return {
        "objective": objective,
        "sequences": len(seq),
        "tokens": tokens,
        "tokens_run": run["tokens_run"].grad,  # (prompts shared by a micro-batch's pairs run once)
        "mean_length": tokens / len(seq),
        "fill_if_padded": tokens
        / sum(max(len(e.input_ids) for p in b for e in p) * 2 * len(b) for b in batches[1:]),
        "minor_page_faults_per_step": run["minor_page_faults"] / n_steps,
        "seconds": sec,
        "tokens_per_s": tokens / sec,
        "gflops": flops / sec / 1e9,  # (of the tokens run)
        **share_of_limit(sec, run["limit"], flops + att),
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4 pairs per set, 2 training steps")
    ap.add_argument("--pairs", type=int, default=12, help="pairs per UltraFeedback set")
    ap.add_argument("--steps", type=int, default=5, help="timed training micro-batches per objective")
    ap.add_argument("--attention", default="eager", choices=("eager", "sdpa", "both"))
    ap.add_argument("--no-training", action="store_true", help="the evaluation (sharing) part only")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    pairs, steps = (4, 2) if args.quick else (args.pairs, args.steps)
    rate = max(matmul_rate() for _ in range(5))
    print(f"float32 square matmul rate {rate:.1f} GFLOP/s (best of 5), {torch.get_num_threads()} threads")
    out = {"square_matmul_gflops": rate, "threads": torch.get_num_threads()}
    out["sharing"] = sharing(load_lm("smollm2"), pairs)
    s = out["sharing"]
    print(
        f"evaluation, {s['pairs']} pairs in 4 sets ({s['tokens']} tokens, {s['distinct_sequences']} distinct "
        f"sequences): shared {s['shared_tokens_per_s']:.0f} tok/s, alone {s['alone_tokens_per_s']:.0f} tok/s "
        f"→ {s['speedup']:.2f}× (target ≥ 1.3×); the most sharing can save on these sets, in tokens "
        f"run: {s['token_ceiling']:.2f}× (mean prompt {s['mean_prompt_tokens']:.0f} tokens)",
        flush=True,
    )
    kinds = () if args.no_training else ("eager", "sdpa") if args.attention == "both" else (args.attention,)
    for condition in ("padded", "split", "split+malloc"):
        scoring.MIN_FILL = 0.0 if condition == "padded" else 0.8
        if condition == "split+malloc":
            tune_malloc()
        for kind in kinds:
            for obj in ("ex_rm", "im_rm"):
                lm = load_lm("smollm2", attention=kind)
                r = out[f"train/{obj}/{kind}/{condition}"] = training(lm, obj, steps)
                print(
                    f"training {obj} ({kind} attention, {condition}): {r['tokens_per_s']:.0f} tok/s at mean "
                    f"length {r['mean_length']:.0f}, {r['gflops']:.1f} GFLOP/s; its matrix products alone "
                    f"{100 * r['of_limit']:.0f} % of its time{' (beaten!)' if r['limit_beaten'] else ''}"
                    f" (target ≥ 60 %); FLOP formula (+ attention) / profiled {r['flop_check']:.3f}; "
                    f"{r['minor_page_faults_per_step']:.0f} page faults per step",
                    flush=True,
                )
    for kind in kinds:
        for obj in ("ex_rm", "im_rm"):
            base = out[f"train/{obj}/{kind}/padded"]["tokens_per_s"]
            out[f"train/{obj}/{kind}/speedup"] = {
                c: out[f"train/{obj}/{kind}/{c}"]["tokens_per_s"] / base for c in ("split", "split+malloc")
            }
            print(f"{obj} {kind}: speed-up over padded {out[f'train/{obj}/{kind}/speedup']}", flush=True)
    if args.json:
        write_json(
            args.json,
            {
                **out,
                "command": " ".join(
                    ["python benchmarks/shifts.py", *(sys.argv[1:] if argv is None else argv)]
                ),
            },
        )
    return out


if __name__ == "__main__":
    main()
