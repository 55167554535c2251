"""What an LM generates on the Hamiltonian-cycle graphs (rmgap hamiltonian; theory/README.md §2): its
sampled responses (``generation_check``) and the exact probability of the Hamiltonian cycles
(``generation_mass``, shared over processes: lm_probes.distributed).

    check = generation_check(lm, data["test"], limit=64, sampling=SamplingConfig(max_new_tokens=19))
    mass = generation_mass(lm, data["test"], limit=64)     # log10 π(C(x)|x) per graph
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch

from lm_probes.common import progress
from lm_probes.data.cycles import GraphSet, cycle_grammar, cycle_response, is_correct_response, parse_response
from lm_probes.distributed import Runtime
from lm_probes.lm.encoding import encode
from lm_probes.lm.generation import SamplingConfig, eos_ids, generate, set_logprob
from lm_probes.stats import paired_bootstrap_ci, wilson_ci
from theory.graphs import hamiltonian_cycles


@torch.no_grad()
def generation_check(lm, graphs: GraphSet, limit: int, sampling: SamplingConfig, constrained=False) -> dict:
    """One sample per prompt of the first ``limit`` graphs → correct / well-formed fractions and samples.
    ``constrained``: sampled under the cycle format (lm_probes.data.cycles.cycle_grammar: only unused
    vertices and <sep>, the end after n vertices), so that every sample is a permutation and the
    fraction of Hamiltonian cycles is a rate any LM can reach (free sampling rarely spells the format)."""
    k = min(limit, len(graphs.prompts))
    eos = eos_ids(lm)
    if constrained and not eos:
        raise ValueError(
            "constrained cycle sampling ends each response with end-of-sequence, and this model has none: "
            "set its tokenizer's eos_token or generation_config.eos_token_id"
        )
    allowed = cycle_grammar(lm.tokenizer, graphs.adj.shape[1], eos[0]) if constrained else None
    if constrained:
        sampling = replace(sampling, max_new_tokens=2 * graphs.adj.shape[1])
    outs = generate(lm, graphs.prompts[:k], sampling, allowed)
    correct = [is_correct_response(graphs.adj[g], o.text) for g, o in enumerate(outs)]
    parsed = [parse_response(o.text, graphs.adj.shape[1]) for o in outs]
    perm = [p is not None and len(set(p.tolist())) == len(p) for p in parsed]
    return {
        "correct": [bool(c) for c in correct],
        "correct_fraction": float(np.mean(correct)),
        "permutation_fraction": float(np.mean(perm)),  # n distinct vertices, cycle or not
        "uniform_rate": uniform_cycle_rate(graphs.adj[:k]),
        "n": k,
        "samples": [
            {"graph": g, "text": o.text, "stopped": o.stopped, "correct": c}
            for g, (o, c) in enumerate(zip(outs, correct, strict=True))
        ],
    }


def uniform_cycle_rate(adjs: np.ndarray) -> float:
    """The expected Hamiltonian-cycle rate of a sampler uniform over the constrained format's
    responses (the n! orders of the vertices) on these graphs (G, n, n): mean over graphs of
    |C(x)| / n!, |C(x)| = every cycle × n starts × 2 directions (theory.graphs.hamiltonian_cycles)."""
    n = adjs.shape[1]
    return float(np.mean([len(hamiltonian_cycles(a)) for a in adjs]) / math.factorial(n))


@torch.no_grad()
def generation_mass(
    lm, graphs: GraphSet, limit: int, *, chat_template=True, quiet=False, runtime=None
) -> dict:
    """log10 π(C(x)|x), exactly: every Hamiltonian-cycle sequence of each of the first ``limit`` graphs
    scored (prompt cache shared by a graph's sequences) and summed in log space. ``runtime``
    (lm_probes.distributed): each process takes its share of the graphs, every process gets them all."""
    runtime = runtime or Runtime()
    k = min(limit, len(graphs.prompts))
    mine = {}
    show = not quiet and runtime.is_main
    for g in progress(runtime.shard(list(range(k))), "generation mass", enabled=show):
        cycles = hamiltonian_cycles(graphs.adj[g])
        p, where = graphs.prompts[g], f"{graphs.name}:graph{g}"
        encs = [
            encode(lm.tokenizer, p, cycle_response(c), chat_template=chat_template, where=where)
            for c in cycles
        ]
        mine[g] = (set_logprob(lm, encs) / math.log(10), len(cycles))
    every = runtime.merge(mine)
    log10, counts = [every[g][0] for g in range(k)], [every[g][1] for g in range(k)]
    return {"log10": log10, "mean_log10": float(np.mean(log10)), "n_sequences": counts}


def constrained_summary(records: dict) -> dict:
    """Per LM and split, the constrained-sampling rate of Hamiltonian cycles with its 95 % Wilson CI;
    for each trained LM, its paired difference from the reference over the same prompts (bootstrap CI)."""
    out = {}
    ref = records["reference"]["generation_constrained"]
    for name, rec in records.items():
        gen = rec["generation_constrained"]
        out[name] = {}
        for split, g in gen.items():
            k, n = sum(g["correct"]), len(g["correct"])
            row = {"correct_fraction": k / n, "ci95": list(wilson_ci(k, n)), "n": n}
            row["uniform_rate"] = g.get("uniform_rate")  # (None in a run from before it was kept)
            if name != "reference":
                diff, lo, hi = paired_bootstrap_ci(g["correct"], ref[split]["correct"])
                row["minus_reference"], row["minus_reference_ci95"] = diff, [lo, hi]
            out[name][split] = row
    return out


def constrained_rows(s: dict, names: list[str]) -> list[str]:
    """table.md's rows: the constrained rates (with CIs), the trained LMs' differences from the reference."""
    lines, c = [], s["generation_constrained"]
    for split in ("train", "test"):
        rate = [c[n][split] for n in names]
        cells = " | ".join(
            f"{r['correct_fraction']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]" for r in rate
        )
        lines.append(f"| Hamiltonian cycles, format-constrained sampling, {split} [95 % CI] | {cells} | — |")
        cells = " | ".join(
            ["—"]
            + [
                f"{c[n][split]['minus_reference']:+.3f} [{c[n][split]['minus_reference_ci95'][0]:+.3f}, "
                f"{c[n][split]['minus_reference_ci95'][1]:+.3f}]"
                for n in names[1:]
            ]
        )
        lines.append(f"| constrained rate − reference's, {split} [95 % CI] | {cells} | — |")
        if rate[0].get("uniform_rate") is not None:  # a property of the graphs: one value per split
            cells = " | ".join([f"{rate[0]['uniform_rate']:.2e}"] + ["—"] * (len(names) - 1))
            label = f"a uniform sampler's expected rate (mean \\|C(x)\\| / n!), {split}"
            lines.append(f"| {label} | {cells} | — |")
    return lines
