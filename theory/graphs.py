"""The Hamiltonian-cycle task of Theorem 1's experiment (theory/README.md §2), on plain arrays.

    rng = np.random.default_rng(0)
    adj = planted_cycle_graphs(n=10, edge_prob=0.2, count=1000, rng=rng)   # (1000, 10, 10) 0/1
    is_hamiltonian_cycle(adj[0], seqs)              # (m,) bool for vertex sequences seqs (m, n)
    hamiltonian_cycles(adj[0])                      # every cycle as a sequence: all starts, both directions
    cycle_pairs(adj, vertex_permutations(7), rng)   # one (cycle, non-cycle permutation) pair per graph
    adj, planted = planted_cycle_graphs(10, 0.2, 1000, rng, return_cycles=True)  # and each planted cycle
    non_cycle_permutations(adj, rng)                # a random non-cycle permutation per graph (any n)

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
    "non_cycle_permutations",
    "planted_cycle_graphs",
    "vertex_permutations",
]


def planted_cycle_graphs(
    n: int, edge_prob: float, count: int, rng: np.random.Generator, *, return_cycles: bool = False
):
    """(count, n, n) symmetric 0/1 adjacency matrices: a Hamiltonian cycle through a random order of
    the vertices plus i.i.d. edges with probability ``edge_prob``; no self-loops. With
    ``return_cycles`` also the planted cycles, (count, n): each graph's random vertex order (the
    random draws are the same either way)."""
    adj = (rng.random((count, n, n)) < edge_prob).astype(np.int8)
    adj = np.triu(adj, 1)
    orders = np.empty((count, n), dtype=np.int64)
    for g in range(count):
        orders[g] = rng.permutation(n)
        adj[g, orders[g], np.roll(orders[g], -1)] = 1
    adj = ((adj + adj.transpose(0, 2, 1)) > 0).astype(np.int8)
    adj[:, np.arange(n), np.arange(n)] = 0
    return (adj, orders) if return_cycles else adj


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


def hamiltonian_cycles(adj: np.ndarray) -> np.ndarray:
    """Every response in C(x) for one graph (n, n): each Hamiltonian cycle once per starting vertex
    and direction, (m, n), in lexicographic order (the order of :func:`vertex_permutations`
    filtered by :func:`is_hamiltonian_cycle`, which tests/theory/test_graphs.py checks). Depth-first
    search over simple paths, so n = 10 and beyond is fast on sparse graphs."""
    n = adj.shape[0]
    nbrs = [np.nonzero(adj[v])[0].tolist() for v in range(n)]
    out: list[list[int]] = []
    path, seen = [], [False] * n

    def extend(v: int) -> None:
        path.append(v)
        seen[v] = True
        if len(path) == n:
            if adj[v, path[0]]:
                out.append(path.copy())
        else:
            for w in nbrs[v]:
                if not seen[w]:
                    extend(w)
        path.pop()
        seen[v] = False

    for start in range(n):
        extend(start)
    return np.array(out, dtype=np.int64).reshape(-1, n)


def non_cycle_permutations(adjs: np.ndarray, rng: np.random.Generator, max_tries: int = 10_000) -> np.ndarray:
    """One uniformly drawn permutation of the vertices that is not a Hamiltonian cycle per graph
    (rejection sampling; the authors' y−: a random permutation with at least one non-edge), (count, n)."""
    count, n = adjs.shape[0], adjs.shape[1]
    out = np.empty((count, n), dtype=np.int64)
    for g in range(count):
        for _ in range(max_tries):
            perm = rng.permutation(n)
            if not is_hamiltonian_cycle(adjs[g], perm[None])[0]:
                out[g] = perm
                break
        else:
            raise ValueError(f"graph {g}: no non-cycle permutation in {max_tries} draws (a complete graph?)")
    return out


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
