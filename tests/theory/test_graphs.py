"""theory.graphs: cycle enumeration (depth-first) against brute force over all permutations."""

import numpy as np

from theory.graphs import (
    hamiltonian_cycles,
    is_hamiltonian_cycle,
    non_cycle_permutations,
    planted_cycle_graphs,
    vertex_permutations,
)


def test_cycle_enumeration_equals_brute_force():
    rng = np.random.default_rng(1)
    for n, p in ((4, 0.5), (5, 0.3), (6, 0.4), (7, 0.2)):
        perms = vertex_permutations(n)
        for adj in planted_cycle_graphs(n, p, 6, rng):
            want = perms[is_hamiltonian_cycle(adj, perms)]
            np.testing.assert_array_equal(hamiltonian_cycles(adj), want)
    # a graph with no Hamiltonian cycle (a path) gives an empty (0, n) array
    path = np.zeros((4, 4), dtype=np.int8)
    for v in range(3):
        path[v, v + 1] = path[v + 1, v] = 1
    assert hamiltonian_cycles(path).shape == (0, 4)


def test_planted_cycles_and_negatives():
    rng = np.random.default_rng(2)
    adj, planted = planted_cycle_graphs(10, 0.2, 20, np.random.default_rng(3), return_cycles=True)
    # the same random draws with and without return_cycles
    np.testing.assert_array_equal(adj, planted_cycle_graphs(10, 0.2, 20, np.random.default_rng(3)))
    assert is_hamiltonian_cycle(adj, planted).all()
    for a, c in zip(adj, planted, strict=True):
        assert any((c == row).all() for row in hamiltonian_cycles(a))
    neg = non_cycle_permutations(adj, rng)
    assert not is_hamiltonian_cycle(adj, neg).any()
    assert (np.sort(neg, axis=1) == np.arange(10)).all()
