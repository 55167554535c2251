"""The probe at the paper's scale on CPU: ``rmgap probe``'s computation (lm_probes.probe.one_step) on a
model with Llama-3.2-1B's shapes and random weights (vocabulary 128 256, width 2 048, 16 layers, GQA
32/8 heads, MLP 8 192, tied head: 1.24 B parameters), float32, measured in one run.

    python benchmarks/probe_1b.py --json benchmarks/results/probe_1b.json   # 1 triple × 200 responses
    python benchmarks/probe_1b.py --lr 1e-4 --json benchmarks/results/probe_1b_lr1e-4.json  # (and 1e-5)
    python benchmarks/probe_1b.py --shape tiny --eval-statements 1          # the same code, small (tests)

The weights cannot be downloaded here; the shapes are what cost time and memory, so random weights
measure the engineering. The tokenizer is SmolLM2's (49 152 ids, all inside the 128 256 rows). The
Persona probe set: 1 training triple, ``--eval-statements`` × 10 evaluation responses, IM-RM and
EX-RM, every column (fixed state, head-only step, exact first order, full step).

Reported: wall time of the probe (model building excluded, and reported apart), peak resident memory
of the process (ru_maxrss: model, gradients, tangents and activations together), the probe's own
per-stage timings and each stage's peak (sampled every 0.1 s: which stage sets the peak), and Pearson
of the exact first order and of the head-only prediction against the observed steps. Targets
(issue 26): ≤ 20 min and ≤ 20 GiB on 2 cores; Pearson ≥ 0.99 for first order.
With ``--device cuda`` (benchmarks/gpu_run.sh) the peak is torch's peak allocation on the device.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import threading
import time
from pathlib import Path

import torch

SHAPES = {  # Llama-3.2-1B's (config.json of meta-llama/Llama-3.2-1B), and a small twin for tests
    "1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
               num_attention_heads=32, num_key_value_heads=8, head_dim=64, rope_theta=500000.0),
    "tiny": dict(vocab_size=128256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_theta=500000.0),
}  # fmt: skip
TARGETS = {"seconds": 20 * 60, "peak_gib": 20.0, "pearson_first_order": 0.99}


def build(shape: str, seed: int = 0, device: str = "cpu"):
    """A LoadedLM of ``shape`` with random weights (drawn on ``device``), SmolLM2's tokenizer, rmgap's
    attention and norms."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from lm_probes.lm.loading import LoadedLM, smollm2_checkpoint
    from lm_probes.lm.numerics import keep_rms_norms_in_dtype, register

    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=8192, tie_word_embeddings=True,
                         rms_norm_eps=1e-5, attn_implementation="eager")  # fmt: skip
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(config).eval()
    model.set_attn_implementation(register())
    n_norms = keep_rms_norms_in_dtype(model)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_checkpoint()[0])
    info = dict(
        model=f"random Llama-3.2-1B-shaped ({shape})", dtype="float32", device=device, attention="eager",
        tied_head=True, float64_rms_norms=n_norms, untied=False, vocab_size=config.vocab_size,
        hidden_size=config.hidden_size, n_parameters=sum(p.numel() for p in model.parameters()),
        max_positions=config.max_position_embeddings, chat_template=tokenizer.chat_template is not None,
    )  # fmt: skip
    return LoadedLM(model, tokenizer, info)


def peak_gib(device: str = "cpu") -> float:
    """Peak memory so far: the process's resident set on CPU (ru_maxrss, KiB on Linux), torch's peak
    allocation on a CUDA device."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class PhasePeaks:
    """The highest memory seen in each of a Timer's phases: a thread reads the process's resident set
    (/proc/self/statm; on CUDA torch's current allocation) every ``every`` seconds and files it under
    ``timer.current`` ("between phases" outside them). A sample, so a spike shorter than ``every`` can
    be missed; ``peak_gib`` (ru_maxrss or torch's peak) is the exact maximum."""

    def __init__(self, timer, device: str = "cpu", every: float = 0.1):
        self.timer, self.device, self.every = timer, device, every
        self.gib: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now_gib(self) -> float:
        if self.device.startswith("cuda"):
            return torch.cuda.memory_allocated(self.device) / 2**30
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30

    def _run(self):
        while not self._stop.wait(self.every):
            phase = self.timer.current or "between phases"
            self.gib[phase] = max(self.gib.get(phase, 0.0), self.now_gib())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def main(argv=None) -> dict:
    from lm_probes.common import Timer
    from lm_probes.data.persona import persona_probe_set
    from lm_probes.probe.one_step import ProbeConfig, run_probe

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    ap.add_argument("--eval-statements", type=int, default=20, help="× 10 evaluation responses")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (benchmarks/gpu_run.sh)")
    ap.add_argument("--json", type=Path, help="write the result here")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    lm = build(args.shape, device=args.device)
    build_s, build_gib = time.perf_counter() - t0, peak_gib(args.device)
    data = persona_probe_set(n_eval_statements=args.eval_statements, n_margin_statements=0)
    cfg = ProbeConfig(lr=args.lr, progress=False)
    t0, timer = time.perf_counter(), Timer()
    with PhasePeaks(timer, args.device) as peaks:
        res = run_probe(lm, data["train"], data["eval"], cfg, timer=timer)
    seconds, s = time.perf_counter() - t0, res["summary"]
    full = s["full"]
    out = {
        "shape": args.shape,
        "n_parameters": lm.info["n_parameters"],
        "n_eval_responses": len(res["records"]),
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "build_seconds": build_s,
        "peak_gib_after_build": build_gib,
        "seconds": seconds,
        "peak_gib": peak_gib(args.device),
        "device": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu",
        "timings": s["timings"],
        "peak_gib_by_phase": peaks.gib,
        "pearson_first_order": {n: full[n]["first_order"]["pearson"] for n in ("im_rm", "ex_rm")},
        "pearson_head_only": {n: s["head_only"][n]["pearson"] for n in ("im_rm", "ex_rm")},
        "lr": args.lr,
        "targets": TARGETS,
        "command": "python benchmarks/probe_1b.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    out["meets"] = {
        "seconds": seconds <= TARGETS["seconds"],
        "peak_gib": out["peak_gib"] <= TARGETS["peak_gib"],
        "pearson_first_order": min(out["pearson_first_order"].values()) >= TARGETS["pearson_first_order"],
    }
    print(
        f"{lm.info['model']}: {out['n_parameters'] / 1e9:.3f} B parameters, on {out['device']}, "
        f"{out['threads']} threads"
    )
    print(
        f"  build {build_s:.0f} s (peak {build_gib:.1f} GiB); probe of {out['n_eval_responses']} responses:"
    )
    for k, v in s["timings"].items():
        print(f"    {k:<34} {v:8.1f} s   peak {peaks.gib.get(k, float('nan')):5.1f} GiB (sampled)")
    t_max, m_max = TARGETS["seconds"], TARGETS["peak_gib"]
    print(f"  probe {seconds / 60:.1f} min / {t_max / 60:.0f} min target = {seconds / t_max:.2f}")
    print(f"  peak {out['peak_gib']:.1f} GiB / {m_max:.0f} GiB target = {out['peak_gib'] / m_max:.2f}")
    for n, p in out["pearson_first_order"].items():
        print(f"  {n} first order vs full step: Pearson {p:.6f} (target ≥ 0.99)")
    if args.json:
        from lm_probes.common import write_json

        write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
