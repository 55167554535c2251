"""Speed of the persona probe on SmolLM2-135M-Instruct (CPU, float32), with a breakdown of time in
model passes vs in the dynamics arithmetic, measured in one run.

    python benchmarks/probe.py            # 1 training triple × 200 evaluation responses
    python benchmarks/probe.py --quick    # 20 evaluation responses
    python benchmarks/probe.py --json benchmarks/results/probe.json   # also write the numbers

Also times one scoring pass over the evaluation responses three ways in the same run, over the same
chunks (≤ 16 responses sharing a prompt), so that the two savings of lm_probes.lm.scoring.score are
measured separately:
  full logits   whole sequences through the model with its logits at every position (a plain
                ``model(...)`` pass, as a scorer without either saving would run);
  head at responses   whole sequences, the output head applied only at response positions
                (``score(mode="whole")``): the saving from not forming logits elsewhere;
  prompt cache  each prompt run once and its KV cache reused for its responses, head at response
                positions (``score(mode="cached")``): the saving from not re-reading prompts.
Targets (issue 4): whole probe ≤ 3 min on 2 cores; dynamics arithmetic ≤ 25 % of the model-pass time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from lm_probes.data.pairs import encode_pairs
from lm_probes.data.persona import persona_probe_set
from lm_probes.lm.encoding import pad_id_of
from lm_probes.lm.loading import load_lm
from lm_probes.lm.scoring import prompt_groups, score
from lm_probes.lm.states import forward
from lm_probes.probe.one_step import ProbeConfig, run_probe


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    n_stmt = 2 if args.quick else 20
    t0 = time.perf_counter()
    lm = load_lm(args.model, dtype="float32")
    t_load = time.perf_counter() - t0
    data = persona_probe_set(n_eval_statements=n_stmt, n_margin_statements=8)
    t0 = time.perf_counter()
    res = run_probe(lm, data["train"], data["eval"], ProbeConfig(progress=False), margin=data["margin"])
    total = time.perf_counter() - t0
    t = res["summary"]["timings"]
    model_s = sum(v for k, v in t.items() if k.startswith("model"))
    dyn_s = t.get("dynamics arithmetic", 0.0)

    encs = [e for pr in encode_pairs(lm.tokenizer, data["eval"]).encodings for e in pr]
    chunks = [[encs[i] for i in idx] for idx in prompt_groups(encs, 16)]
    pad = pad_id_of(lm.tokenizer)
    passes = {
        "full logits": lambda c: forward(lm.model, c, pad),
        "head at responses": lambda c: score(lm.model, c, pad, mode="whole"),
        "prompt cache": lambda c: score(lm.model, c, pad, mode="cached"),
    }
    seconds = {}
    with torch.no_grad():
        for name, fn in passes.items():
            fn(chunks[0])  # warm-up
            t0 = time.perf_counter()
            for c in chunks:
                fn(c)
            seconds[name] = time.perf_counter() - t0

    print(
        f"\npersona probe, {len(encs)} evaluation responses, {lm.info['model']} float32, "
        f"{torch.get_num_threads()} threads (load {t_load:.1f} s, not counted)"
    )
    for k, v in t.items():
        print(f"  {k:<34} {v:7.1f} s")
    print(f"  {'whole probe':<34} {total:7.1f} s   (target ≤ 180 s)")
    print(f"  dynamics arithmetic / model passes = {dyn_s / model_s:.2%}   (target ≤ 25 %)")
    full, head, cache = seconds["full logits"], seconds["head at responses"], seconds["prompt cache"]
    print(f"\none scoring pass over {len(encs)} responses in {len(chunks)} prompt chunks:")
    for name, sec in seconds.items():
        print(f"  {name:<18} {sec:6.2f} s")
    print(
        f"  head only at response positions: {full / head:.2f}× (full logits / head at responses)\n"
        f"  prompt cache:                    {head / cache:.2f}× (head at responses / prompt cache)\n"
        f"  both:                            {full / cache:.2f}×"
    )
    out = dict(
        model=lm.info["model"],
        n_eval_responses=len(encs),
        threads=torch.get_num_threads(),
        total_seconds=total,
        timings=t,
        model_seconds=model_s,
        dynamics_seconds=dyn_s,
        dynamics_fraction=dyn_s / model_s,
        scoring_chunks=len(chunks),
        scoring_pass_seconds=seconds,
        head_saving=full / head,
        cache_saving=head / cache,
        command="python benchmarks/probe.py " + " ".join(sys.argv[1:] if argv is None else argv),
    )
    if args.json:
        from lm_probes.common import write_json

        write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
