"""The Hamiltonian-cycle task of Theorem 1's experiment (theory/README.md §2), on plain arrays.

    rng = np.random.default_rng(0)
    adj = planted_cycle_graphs(n=10, edge_prob=0.2, count=1000, rng=rng)   # (1000, 10, 10) 0/1
    is_hamiltonian_cycle(adj[0], seqs)              # (m,) bool for vertex sequences seqs (m, n)
    hamiltonian_cycles(adj[0])                      # every cycle as a sequence: all starts, both directions
    cycle_pairs(adj, vertex_permutations(10), rng)  # one (cycle, non-cycle permutation) pair per graph

A prompt is a graph on n vertices; a response is a sequence of n vertices; it is correct when it is a
permutation whose consecutive vertices, and the last and the first, are adjacent. Used by
simulations/generation_verification.py and by the real-LM experiment.
"""

from __future__ import annotations

import itertools

import numpy as np

__all__ = [
    "cycle_pairs",
    "hamiltonian_cycles",
    "is_hamiltonian_cycle",
    "planted_cycle_graphs",
    "vertex_permutations",
]


def planted_cycle_graphs(n: int, edge_prob: float, count: int, rng: np.random.Generator) -> np.ndarray:
    """(count, n, n) symmetric 0/1 adjacency matrices: a Hamiltonian cycle through a random order of
    the vertices plus i.i.d. edges with probability ``edge_prob``; no self-loops."""
    adj = (rng.random((count, n, n)) < edge_prob).astype(np.int8)
    adj = np.triu(adj, 1)
    for g in range(count):
        order = rng.permutation(n)
        adj[g, order, np.roll(order, -1)] = 1
    adj = ((adj + adj.transpose(0, 2, 1)) > 0).astype(np.int8)
    adj[:, np.arange(n), np.arange(n)] = 0
    return adj


def is_hamiltonian_cycle(adj: np.ndarray, seqs: np.ndarray) -> np.ndarray:
    """Is each vertex sequence a Hamiltonian cycle? adj (n, n) with seqs (m, n), or adj (m, n, n)
    with one sequence per graph → (m,) bool."""
    n = seqs.shape[-1]
    ok = (np.sort(seqs, axis=-1) == np.arange(n)).all(axis=-1)
    nxt = np.roll(seqs, -1, axis=-1)
    edges = adj[seqs, nxt] if adj.ndim == 2 else adj[np.arange(len(seqs))[:, None], seqs, nxt]
    return ok & edges.all(axis=-1)


def vertex_permutations(n: int) -> np.ndarray:
    """All n! orderings of the vertices, (n!, n) (n ≤ 10 is practical)."""
    return np.array(list(itertools.permutations(range(n))))


def hamiltonian_cycles(adj: np.ndarray, perms: np.ndarray | None = None) -> np.ndarray:
    """Every response in C(x) for one graph (n, n): each Hamiltonian cycle once per starting vertex
    and direction, (m, n). ``perms`` (from :func:`vertex_permutations`) may be passed to reuse it."""
    perms = vertex_permutations(adj.shape[0]) if perms is None else perms
    return perms[is_hamiltonian_cycle(adj, perms)]


def cycle_pairs(
    adjs: np.ndarray, perms: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One preference pair per graph: y+ a uniformly drawn Hamiltonian-cycle sequence, y− a uniformly
    drawn permutation that is not one. → (y+ (count, n), y− (count, n))."""
    pos, neg = [], []
    for a in adjs:
        good = is_hamiltonian_cycle(a, perms)
        pos.append(perms[rng.choice(np.nonzero(good)[0])])
        neg.append(perms[rng.choice(np.nonzero(~good)[0])])
    return np.array(pos), np.array(neg)
