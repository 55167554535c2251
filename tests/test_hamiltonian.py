"""Generation (lm_probes.generation), the cycle task as text (lm_probes.hamiltonian) and
``rmgap hamiltonian`` end to end, on a tiny model."""

import json

import numpy as np
import pytest
import torch

from lm_probes.generation import SamplingConfig, generate, set_logprob
from lm_probes.hamiltonian import (
    SEP,
    add_graph_tokens,
    cycle_response,
    hamiltonian_data,
    is_correct_response,
    parse_response,
)
from lm_probes.scoring import Encoded, prompt_ids
from tests.conftest import make_tiny_lm

DIGITS = tuple(str(d) for d in range(10))


def graph_lm(seed=0):
    return add_graph_tokens(
        make_tiny_lm(max_positions=256, extra_words=(*DIGITS, "Vertices:", "Edges:")), seed=seed
    )


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


def test_generation_is_reproducible_and_its_logprob_is_the_scoring_paths():
    lm = graph_lm()
    data = hamiltonian_data(n=5, edge_prob=0.3, n_train=5, n_test=1, seed=0)
    prompts = data["train"].prompts  # different lengths: left padding within a batch
    cfg = SamplingConfig(max_new_tokens=7, batch_size=3, seed=5)
    rng_before = torch.get_rng_state()
    a, b = generate(lm, prompts, cfg), generate(lm, prompts, cfg)
    assert torch.equal(rng_before, torch.get_rng_state())  # the global RNG is left alone
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    c = generate(lm, prompts, SamplingConfig(max_new_tokens=7, batch_size=3, seed=6))
    assert [g.token_ids for g in a] != [g.token_ids for g in c]
    # the sampler's ln π of each sample = the scoring path's, and the exact mass of the set of samples
    # (set_logprob) = the sum of the sampled sequences' probabilities (generate rounds logits to float32:
    # a wrong position or padding would be off by far more than that)
    for g in a:
        p = prompt_ids(lm.tokenizer, g.prompt)[1]
        enc = Encoded(tuple(p) + g.token_ids, len(p), False)
        assert set_logprob(lm, [enc]) == pytest.approx(g.logprob, rel=1e-6)
    many = generate(lm, [prompts[0]] * 40, SamplingConfig(max_new_tokens=3, batch_size=8, seed=1))
    p = prompt_ids(lm.tokenizer, prompts[0])[1]
    distinct = {g.token_ids: g.logprob for g in many if g.stopped == "length"}
    encs = [Encoded(tuple(p) + ids, len(p), False) for ids in distinct]
    assert set_logprob(lm, encs + encs[:3]) == pytest.approx(
        np.logaddexp.reduce(list(distinct.values())), rel=1e-6
    )
    # greedy decoding is the argmax path
    greedy = generate(lm, prompts[:1], SamplingConfig(temperature=0, max_new_tokens=3))[0]
    ids = list(prompt_ids(lm.tokenizer, prompts[0])[1])
    for _ in range(3):
        ids.append(int(lm.model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    assert greedy.token_ids == tuple(ids[-3:]) or greedy.stopped == "eos"


def test_hamiltonian_end_to_end(tmp_path):
    from lm_probes.experiments.hamiltonian import main

    out = tmp_path / "ham"
    argv = ["--vertices", "5", "--edge-prob", "0.3", "--n-train", "8", "--n-test", "4", "--epochs", "1"]
    argv += ["--lr", "1e-3", "--out", str(out), "--quiet"]
    s = main(argv, lm_factory=lambda: make_tiny_lm(max_positions=256, extra_words=(*DIGITS, "Vertices:")))
    saved = json.loads((out / "summary.json").read_text())
    for split in ("train", "test"):
        for rm in ("ex_rm", "im_rm"):
            assert 0 <= saved["accuracy"][split][rm] <= 1
        for lm in ("reference", "im_rm", "ex_rm"):
            assert 0 <= saved["generation"][lm]["correct_fraction"][split] <= 1
    for lm in ("reference", "im_rm", "ex_rm"):
        assert np.isfinite(saved["generation_mass"][lm]["mean_log10"])
        assert saved["generation_mass"][lm]["mean_log10"] < 0
    # a 5-vertex graph's cycles: 10 sequences per cycle (5 starts × 2 directions)
    assert s["n_cycle_sequences_mean"] >= 10
    assert len(s["tilt"]["log10"]) == 4 and np.isfinite(s["tilt"]["mean_log10"])
    for f in (
        "table.md",
        "hamiltonian.png",
        "samples.jsonl",
        "im_rm/summary.json",
        "ex_rm/rewards_test.jsonl",
    ):
        assert (out / f).exists(), f
    assert len((out / "samples.jsonl").read_text().splitlines()) == 3 * (8 + 4)
    # the graph-by-graph comparison, and --report re-deriving it and the table from summary.json alone
    vs = saved["mass_vs_reference"]
    assert set(vs) == {"ex_rm", "im_rm"} and 0 <= vs["im_rm"]["graphs_above"] <= vs["im_rm"]["n"] == 4
    (out / "table.md").unlink()
    assert main(["--report", str(out)])["mass_vs_reference"] == vs and (out / "table.md").exists()


def test_bad_settings_are_one_line_errors(capsys):
    from rmgap.cli import main

    assert main(["hamiltonian", "--vertices", "12", "--quiet"]) == 2
    assert "between 3 and 10" in capsys.readouterr().err
    assert main(["hamiltonian", "--edge-prob", "1.5", "--quiet"]) == 2
    assert "--edge-prob" in capsys.readouterr().err
