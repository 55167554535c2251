"""lm_probes.data.cycles: the graph tokens and the check of a response."""

import numpy as np
import torch

from lm_probes.data.cycles import (
    SEP,
    cycle_response,
    hamiltonian_data,
    is_correct_response,
    parse_response,
)
from tests.conftest import graph_lm


def test_graph_tokens_are_single_tokens_and_copies_start_equal():
    a, b = graph_lm(), graph_lm()
    ids = a.tokenizer(cycle_response([2, 0, 1]), add_special_tokens=False)["input_ids"]
    assert len(ids) == 5 and ids[1] == ids[3] == a.tokenizer.convert_tokens_to_ids(SEP)
    assert a.info["vocab_size"] == len(a.tokenizer)
    for (n, p), (_, q) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert torch.equal(p, q), n  # the new embedding rows are drawn from the seed


def test_response_check():
    adj = np.zeros((4, 4), dtype=np.int8)
    for u, v in ((0, 1), (1, 2), (2, 3), (3, 0)):
        adj[u, v] = adj[v, u] = 1
    assert is_correct_response(adj, "0<sep>1<sep>2<sep>3")
    assert is_correct_response(adj, " 2 <sep> 1 <sep> 0 <sep> 3 ")  # any start and direction, spaces
    assert not is_correct_response(adj, "0<sep>2<sep>1<sep>3")  # 0-2 is not an edge
    assert not is_correct_response(adj, "0<sep>1<sep>2<sep>3<sep>0")  # n + 1 vertices
    assert not is_correct_response(adj, "0<sep>1<sep>1<sep>3")  # repeats
    assert parse_response("0<sep>1<sep>x<sep>3", 4) is None
    data = hamiltonian_data(n=5, edge_prob=0.3, n_train=6, n_test=3, seed=1)
    for gs in data.values():
        for g, pr in enumerate(gs.pairs()):
            assert is_correct_response(gs.adj[g], pr.chosen) and not is_correct_response(
                gs.adj[g], pr.rejected
            )
            assert f"{SEP}0{SEP}1" in pr.prompt and pr.prompt.endswith("\n")
