"""What an LM generates on the Hamiltonian-cycle graphs (rmgap hamiltonian; theory/README.md §2): its
sampled responses (``generation_check``) and the exact probability of the Hamiltonian cycles
(``generation_mass``, shared over processes: lm_probes.distributed).

    check = generation_check(lm, data["test"], limit=64, sampling=SamplingConfig(max_new_tokens=19))
    mass = generation_mass(lm, data["test"], limit=64)     # log10 π(C(x)|x) per graph
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lm_probes.common import progress
from lm_probes.data.cycles import GraphSet, cycle_response, is_correct_response, parse_response
from lm_probes.distributed import Runtime
from lm_probes.lm.encoding import encode
from lm_probes.lm.generation import SamplingConfig, generate, set_logprob
from theory.graphs import hamiltonian_cycles


@torch.no_grad()
def generation_check(lm, graphs: GraphSet, limit: int, sampling: SamplingConfig) -> dict:
    """One sample per prompt of the first ``limit`` graphs → correct / well-formed fractions and samples."""
    k = min(limit, len(graphs.prompts))
    outs = generate(lm, graphs.prompts[:k], sampling)
    correct = [is_correct_response(graphs.adj[g], o.text) for g, o in enumerate(outs)]
    parsed = [parse_response(o.text, graphs.adj.shape[1]) for o in outs]
    perm = [p is not None and len(set(p.tolist())) == len(p) for p in parsed]
    return {
        "correct_fraction": float(np.mean(correct)),
        "permutation_fraction": float(np.mean(perm)),  # n distinct vertices, cycle or not
        "n": k,
        "samples": [
            {"graph": g, "text": o.text, "stopped": o.stopped, "correct": c}
            for g, (o, c) in enumerate(zip(outs, correct, strict=True))
        ],
    }


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
