"""Speed of the persona probe on SmolLM2-135M-Instruct (CPU, float32), with a breakdown of time in
model passes vs in the dynamics arithmetic, measured in one run.

    python benchmarks/probe.py            # 1 training triple × 200 evaluation responses
    python benchmarks/probe.py --quick    # 20 evaluation responses

Also times one scoring pass over the evaluation responses two ways in the same run: prompt-cached
(lm_probes.scoring.score: each distinct prompt once, only response tokens recomputed) and whole
sequences (every response re-reads its prompt). Targets (issue 4): whole probe ≤ 3 min on 2 cores;
dynamics arithmetic ≤ 25 % of the model-pass time.
"""

from __future__ import annotations

import argparse
import time

import torch

from lm_probes.data import persona_probe_set
from lm_probes.loading import load_lm
from lm_probes.probe import ProbeConfig, _Probe, run_probe
from lm_probes.scoring import forward, score


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--model", default="smollm2")
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

    P = _Probe(lm, ProbeConfig(progress=False))
    encs = P.encode_pairs(data["eval"])
    with torch.no_grad():
        t0 = time.perf_counter()
        score(lm.model, encs, P.pad)
        cached = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(0, len(encs), 16):
            forward(lm.model, encs[i : i + 16], P.pad)
        whole = time.perf_counter() - t0

    print(
        f"\npersona probe, {len(encs)} evaluation responses, {lm.info['model']} float32, "
        f"{torch.get_num_threads()} threads (load {t_load:.1f} s, not counted)"
    )
    for k, v in t.items():
        print(f"  {k:<34} {v:7.1f} s")
    print(f"  {'whole probe':<34} {total:7.1f} s   (target ≤ 180 s)")
    print(f"  dynamics arithmetic / model passes = {dyn_s / model_s:.2%}   (target ≤ 25 %)")
    print(
        f"\none scoring pass over {len(encs)} responses: prompt-cached {cached:.1f} s, whole sequences "
        f"{whole:.1f} s → {whole / cached:.1f}× faster"
    )
    return dict(
        total_seconds=total,
        model_seconds=model_s,
        dynamics_seconds=dyn_s,
        dynamics_fraction=dyn_s / model_s,
        cached_pass_seconds=cached,
        whole_pass_seconds=whole,
    )


if __name__ == "__main__":
    main()
