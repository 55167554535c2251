"""The Hamiltonian-cycle task as text for a real LM (the paper's §3 experiment; theory/README.md §2):
graphs, prompts, responses, the correctness check of a generated text, and the two new tokens. What
an LM generates on the graphs is measured by rmgap.experiments.hamiltonian_generation.

    from lm_probes.data.cycles import hamiltonian_data, add_graph_tokens, is_correct_response
    data = hamiltonian_data(n=10, edge_prob=0.2, n_train=1000, n_test=200, seed=0)
    data["train"].pairs()        # [Pair(prompt, chosen = planted cycle, rejected = a non-cycle permutation)]
    lm = add_graph_tokens(load_lm("smollm2"), seed=0)      # adds <sep>, <edge_sep>; resizes the embeddings
    is_correct_response(data["test"].adj[0], "3<sep>0<sep>...")   # exactly n distinct vertices, a cycle

Prompt (the authors' format, edges in a random order, each graph's edges listed once as u<edge_sep>v
with u < v), then a newline so that the first vertex of a response never merges with the last one of
the prompt when no chat template is used:

    Vertices: <sep>0<sep>1<sep>…<sep>9
    Edges: <sep>0<edge_sep>4<sep>2<edge_sep>7<sep>…

Response: the vertices joined by <sep> ("4<sep>0<sep>…"), 2n − 1 tokens when every vertex is one token.
y+ is the graph's planted cycle (theory.graphs.planted_cycle_graphs), y− a uniformly drawn permutation
with at least one non-edge (theory.graphs.non_cycle_permutations).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lm_probes.data.pairs import Pair
from lm_probes.lm.loading import LoadedLM
from theory.graphs import (
    is_hamiltonian_cycle,
    non_cycle_permutations,
    planted_cycle_graphs,
)

SEP, EDGE_SEP = "<sep>", "<edge_sep>"


def graph_prompt(adj: np.ndarray, rng: np.random.Generator) -> str:
    """The prompt of one graph (n, n), its edges in an order drawn from ``rng``."""
    n = adj.shape[0]
    edges = np.argwhere(np.triu(adj, 1))
    edges = edges[rng.permutation(len(edges))]
    vertices = SEP + SEP.join(str(v) for v in range(n))
    return f"Vertices: {vertices}\nEdges: {SEP}" + SEP.join(f"{u}{EDGE_SEP}{v}" for u, v in edges) + "\n"


def cycle_response(seq) -> str:
    """A vertex sequence as a response: the vertices joined by <sep>."""
    return SEP.join(str(int(v)) for v in seq)


def parse_response(text: str, n: int) -> np.ndarray | None:
    """The vertex sequence a generated text spells, or None when it is not n integers in 0..n−1 joined
    by <sep> (surrounding whitespace ignored)."""
    parts = [p.strip() for p in text.strip().split(SEP)]
    if len(parts) != n or not all(p.isdigit() for p in parts):
        return None
    seq = np.array([int(p) for p in parts])
    return seq if (seq < n).all() else None


def is_correct_response(adj: np.ndarray, text: str) -> bool:
    """The paper's check: exactly n distinct vertices, each consecutive pair (and the last with the
    first) an edge of the graph."""
    seq = parse_response(text, adj.shape[0])
    return seq is not None and bool(is_hamiltonian_cycle(adj, seq[None])[0])


def cycle_grammar(tokenizer, n: int, eos: int):
    """The format of a response, as constrained sampling's ``allowed`` (lm_probes.lm.generation):
    n distinct vertices joined by <sep>, then ``eos``: a vertex not used yet, <sep> after each of the
    first n − 1 vertices, the end after the n-th. Every vertex and <sep> must be one token."""
    ids = {v: tokenizer(str(v), add_special_tokens=False)["input_ids"] for v in range(n)}
    sep = tokenizer(SEP, add_special_tokens=False)["input_ids"]
    if any(len(t) != 1 for t in ids.values()) or len(sep) != 1:
        raise ValueError("constrained cycle sampling needs every vertex 0..n−1 and <sep> to be one token")
    vertex, (sep,) = {t[0]: v for v, t in ids.items()}, sep

    def allowed(new: list[int]) -> list[int]:
        used = [t for t in new if t in vertex]
        if len(used) == n:
            return [eos]
        if new and new[-1] in vertex:
            return [sep]
        return [t for t in vertex if t not in used]

    return allowed


@dataclass
class GraphSet:
    adj: np.ndarray  # (G, n, n) 0/1
    prompts: list[str]  # G prompts
    chosen: np.ndarray  # (G, n) the planted cycles
    rejected: np.ndarray  # (G, n) non-cycle permutations
    name: str = "graphs"

    def pairs(self, limit: int | None = None) -> list[Pair]:
        """The first ``limit`` graphs (all by default) as preference pairs."""
        rows = range(len(self.prompts) if limit is None else min(limit, len(self.prompts)))
        return [
            Pair(
                self.prompts[g],
                cycle_response(self.chosen[g]),
                cycle_response(self.rejected[g]),
                self.name,
                f"{self.name}:graph{g}",
            )
            for g in rows
        ]


def hamiltonian_data(
    *, n: int = 10, edge_prob: float = 0.2, n_train: int = 1000, n_test: int = 200, seed: int = 0
) -> dict[str, GraphSet]:
    """{"train": GraphSet, "test": GraphSet}, every draw from ``seed``."""
    if n < 3 or n > 10:
        raise ValueError(f"--vertices must be between 3 and 10 (one token per vertex), got {n}")
    if not 0 <= edge_prob <= 1:
        raise ValueError(f"--edge-prob must lie in [0, 1], got {edge_prob}")
    rng = np.random.default_rng([seed, 11])
    out = {}
    for name, count in (("train", n_train), ("test", n_test)):
        adj, planted = planted_cycle_graphs(n, edge_prob, count, rng, return_cycles=True)
        rejected = non_cycle_permutations(adj, rng)
        prompts = [graph_prompt(a, rng) for a in adj]
        out[name] = GraphSet(adj, prompts, planted, rejected, name)
    return out


def add_graph_tokens(lm: LoadedLM, *, seed: int = 0) -> LoadedLM:
    """Add <sep> and <edge_sep> to the tokenizer as new tokens and resize the embeddings (and a separate
    output head) to match. transformers initialises the new rows by sampling around the mean of the
    old ones; that draw is seeded here (inside fork_rng) so every copy of the model — the reference and
    each reward model — starts from the same weights. Returns ``lm``, changed in place."""
    added = lm.tokenizer.add_tokens([SEP, EDGE_SEP])
    if added:
        with torch.random.fork_rng(devices=[lm.device] if lm.device.type == "cuda" else []):
            torch.manual_seed(seed)
            lm.model.resize_token_embeddings(len(lm.tokenizer))
        lm.model.__dict__.pop("_rmgap_head_is_linear", None)  # scoring re-checks the resized head
    lm.info.update(
        vocab_size=lm.model.get_output_embeddings().weight.shape[0],
        added_tokens=[SEP, EDGE_SEP],
    )
    return lm
