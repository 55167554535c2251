"""When does running a shared prompt once pay? lm_probes.lm.scoring's ``"auto"`` mode runs each distinct
prompt of a batch once, its KV cache expanded over the responses (``"cached"``), when
``shared_prompt_gain`` (whole-sequence tokens over the cached mode's tokens, its response padding
counted) is at least ``SHARE_GAIN``; else whole sequences split by length. This times both modes on
training micro-batches as the trainer forms them (SmolLM2-135M-Instruct, float32, IM-RM forward +
backward, best of 2 alternating), on Persona (train.py's data: ~50-token prompts, short answers,
8 pairs a micro-batch) and on UltraFeedback (the shifts cpu preset: long, uneven answers, 2 pairs),
and reports, per data set, the time of each mode and of auto's choice, and the batches where auto
took the slower mode.

    python benchmarks/shared_prompts.py --json benchmarks/results/shared_prompts.json
    python benchmarks/shared_prompts.py --quick
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from lm_probes.common import write_json
from lm_probes.data.pairs import encode_pairs
from lm_probes.data.persona import persona_data
from lm_probes.lm import scoring
from lm_probes.lm.loading import load_lm
from lm_probes.rm.config import TrainConfig
from lm_probes.rm.reward_model import RewardModel
from rmgap.experiments.shifts import PRESETS, shift_data

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _limit import bucketed_batches, scoring_forced


def _step_seconds(rm, batch, mode: str) -> float:
    """One forward + backward of ``batch`` with scoring forced to ``mode``."""
    with scoring_forced(mode):
        t0 = time.perf_counter()
        rm.batch_loss(batch).backward()
        rm.zero_grad(set_to_none=True)
        return time.perf_counter() - t0


def timed(rm, batches) -> list[dict]:
    rows = []
    for b in batches:
        flat = [e for p in b for e in p]
        t = {"whole": [], "cached": []}
        for _ in range(2):
            for mode in t:
                t[mode].append(_step_seconds(rm, b, mode))
        gain = scoring.shared_prompt_gain(flat)
        auto = "cached" if gain >= scoring.SHARE_GAIN else "whole"
        best = {m: min(v) for m, v in t.items()}
        rows.append(
            {
                "pairs": len(b),
                "tokens": sum(len(e.input_ids) for e in flat),
                "gain": gain,
                "whole_s": best["whole"],
                "cached_s": best["cached"],
                "auto": auto,
                "auto_s": best[auto],
                "auto_slower": best[auto] > min(best.values()),
            }
        )
    return rows


def summary(rows: list[dict]) -> dict:
    s = {k: sum(r[f"{k}_s"] for r in rows) for k in ("whole", "cached", "auto")}
    return {
        "batches": len(rows),
        "seconds": s,
        "auto_speedup_over_whole": s["whole"] / s["auto"],
        "auto_took_slower": sum(r["auto_slower"] for r in rows),
        "auto_slower_by_s": sum(r["auto_s"] - min(r["whole_s"], r["cached_s"]) for r in rows),
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 micro-batches of each")
    ap.add_argument("--batches", type=int, default=12, help="micro-batches of each data set")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    n = 2 if args.quick else args.batches
    lm = load_lm("smollm2")
    rm = RewardModel(lm, TrainConfig(objective="im_rm"))
    rm.model.train()
    uf = shift_data(
        lm.tokenizer,
        "ultrafeedback",
        dict(PRESETS["cpu"], n_eval=1),
        seed=0,
        max_length=lm.info["max_positions"],
    ).train
    sets = {
        "persona": (persona_data(n_train=80, n_test=40, pairs_per_statement=2)["train"], 8),
        "ultrafeedback": (uf, PRESETS["cpu"]["train"]["micro_batch"]),
    }
    out = {"share_gain": scoring.SHARE_GAIN, "threads": torch.get_num_threads()}
    for name, (pairs, micro) in sets.items():
        encs = encode_pairs(lm.tokenizer, pairs, max_part_length=512).encodings
        rows = timed(rm, bucketed_batches(rm, encs, micro, n - 1))
        for r in rows:
            print(
                f"{name}: {r['pairs']} pairs, {r['tokens']} tokens, gain {r['gain']:.2f}: whole "
                f"{r['whole_s']:.2f} s, cached {r['cached_s']:.2f} s → auto {r['auto']}"
                f"{' (the slower)' if r['auto_slower'] else ''}",
                flush=True,
            )
        s = out[name] = {"rows": rows, **summary(rows)}
        print(
            f"{name}: whole {s['seconds']['whole']:.1f} s, cached {s['seconds']['cached']:.1f} s, auto "
            f"{s['seconds']['auto']:.1f} s ({s['auto_speedup_over_whole']:.2f}× whole); auto took the "
            f"slower mode in {s['auto_took_slower']} of {s['batches']} batches",
            flush=True,
        )
    if args.json:
        command = ["python benchmarks/shared_prompts.py", *(sys.argv[1:] if argv is None else argv)]
        write_json(args.json, {**out, "command": " ".join(command)})
    return out


if __name__ == "__main__":
    main()
