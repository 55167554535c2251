"""Generation (lm_probes.lm.generation), the cycle task as text (lm_probes.data.cycles) and
``rmgap hamiltonian`` end to end, on a tiny model."""

import json

import numpy as np
import pytest

from lm_probes.common import read_jsonl_rows
from tests.conftest import DIGITS, make_tiny_lm


def test_hamiltonian_end_to_end(tmp_path):
    from rmgap.experiments.hamiltonian import main

    out = tmp_path / "ham"
    argv = ["--vertices", "5", "--edge-prob", "0.3", "--n-train", "8", "--n-test", "4", "--epochs", "1"]
    argv += ["--lr", "1e-3", "--out", str(out), "--quiet", "--eval-every-epoch"]
    s = main(argv, lm_factory=lambda: make_tiny_lm(max_positions=256, extra_words=(*DIGITS, "Vertices:")))
    saved = json.loads((out / "summary.json").read_text())
    for rm in ("ex_rm", "im_rm"):  # --eval-every-epoch: the learning curve from θ₀ on
        history = json.loads((out / rm / "history.json").read_text())
        assert [h["epoch"] for h in history if "test" in h] == [0, 1]
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
        "samples.jsonl.gz",
        "im_rm/summary.json",
        "ex_rm/rewards_test.jsonl.gz",
    ):
        assert (out / f).exists(), f
    samples = read_jsonl_rows(out / "samples.jsonl.gz")
    assert len(samples) == 2 * 3 * (8 + 4)  # free and format-constrained, 3 LMs, train and test prompts
    from lm_probes.data.cycles import parse_response

    for smp in (x for x in samples if x["constrained"]):  # every constrained sample is a permutation
        seq = parse_response(smp["text"], 5)
        assert seq is not None and sorted(seq.tolist()) == list(range(5)) and smp["stopped"] == "eos"
    for lm in ("reference", "im_rm", "ex_rm"):
        for split, n in (("train", 8), ("test", 4)):
            c = saved["generation_constrained"][lm][split]
            rate = (
                sum(
                    x["correct"]
                    for x in samples
                    if x["constrained"] and x["lm"] == lm and x["split"] == split
                )
                / n
            )
            assert c["correct_fraction"] == rate and c["ci95"][0] <= rate <= c["ci95"][1] and c["n"] == n
            assert (
                lm == "reference"
                or c["minus_reference_ci95"][0] <= c["minus_reference"] <= c["minus_reference_ci95"][1]
            )
    assert "format-constrained sampling" in (out / "table.md").read_text()
    # a uniform sampler's rate: every one of the 5! orders tried on each sampled graph
    from itertools import permutations

    from lm_probes.data.cycles import hamiltonian_data
    from theory.graphs import is_hamiltonian_cycle

    data = hamiltonian_data(n=5, edge_prob=0.3, n_train=8, n_test=4, seed=0)
    orders = np.array(list(permutations(range(5))))
    for split, n in (("train", 8), ("test", 4)):
        hits = [is_hamiltonian_cycle(data[split].adj[g], orders).mean() for g in range(n)]
        for lm in ("reference", "im_rm", "ex_rm"):
            got = saved["generation_constrained"][lm][split]["uniform_rate"]
            assert got == pytest.approx(np.mean(hits), rel=1e-12)
    assert "uniform sampler" in (out / "table.md").read_text()
    frozen = saved["frozen_baselines"]  # fitted on every training pair, scored on every test pair
    assert frozen["n"] == {"train": 8, "test": 4} and 0 <= frozen["linear_probe"]["last"]["test"] <= 1
    assert "linear head on the frozen θ₀ last state" in (out / "table.md").read_text()
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


def test_exact_mass_is_the_brute_force_sum_over_every_cycle_sequence():
    """π(C(x)|x) of each graph against an independent count: every permutation of the vertices kept
    when each consecutive pair and the closing pair are edges, each scored alone and summed. Fails
    when another graph's cycles are scored, or only some of a graph's sequences."""
    import itertools
    import math

    import torch

    from lm_probes.data.cycles import cycle_response, hamiltonian_data
    from lm_probes.lm.encoding import encode, pad_id_of
    from lm_probes.lm.scoring import score
    from rmgap.experiments.hamiltonian_generation import generation_mass
    from tests.conftest import graph_lm

    lm = graph_lm()
    graphs = hamiltonian_data(n=5, edge_prob=0.5, n_train=1, n_test=3, seed=2)["test"]
    got = generation_mass(lm, graphs, 3, chat_template=False, quiet=True)
    counts = []
    for g, adj in enumerate(graphs.adj):
        seqs = [
            s for s in itertools.permutations(range(5)) if all(adj[s[i], s[(i + 1) % 5]] for i in range(5))
        ]
        counts.append(len(seqs))
        with torch.no_grad():
            encs = [
                encode(lm.tokenizer, graphs.prompts[g], cycle_response(s), chat_template=False) for s in seqs
            ]
            lps = [score(lm.model, [e], pad_id_of(lm.tokenizer), mode="single").logprob.item() for e in encs]
        want = math.log10(sum(math.exp(x) for x in lps))
        assert abs(got["log10"][g] - want) < 1e-9, (g, got["log10"], want)
    assert got["n_sequences"] == counts and min(counts) >= 10  # (a planted cycle: 5 starts × 2 directions)


def test_hamiltonian_over_seeds_aggregates_each_seeds_own_numbers(tmp_path):
    """--seeds: one set of graphs, each seed its own run under <out>/seed<k>/; summary_seeds.json's
    per-seed values are those runs' own summaries, the mean inside its CI."""
    from rmgap.experiments.hamiltonian import main

    out = tmp_path / "ham"
    argv = ["--vertices", "5", "--edge-prob", "0.3", "--n-train", "6", "--n-test", "4", "--epochs", "1"]
    argv += ["--lr", "1e-3", "--seeds", "0,1", "--out", str(out), "--quiet"]
    res = main(argv, lm_factory=lambda: make_tiny_lm(max_positions=256, extra_words=(*DIGITS, "Vertices:")))
    runs = [json.loads((out / f"seed{k}" / "summary.json").read_text()) for k in (0, 1)]
    assert [r["config"]["train"]["seed"] for r in runs] == [0, 1]
    for rm in ("ex_rm", "im_rm"):
        a = res["accuracy_test"][rm]
        assert a["per_seed"] == [r["accuracy"]["test"][rm] for r in runs]
        assert a["ci95"][0] <= a["mean"] <= a["ci95"][1]
    for lm in ("reference", "im_rm", "ex_rm"):
        c = res["constrained_rate"][lm]["test"]
        assert c["per_seed"] == [r["generation_constrained"][lm]["test"]["correct_fraction"] for r in runs]
    assert (out / "table_seeds.md").exists() and json.loads((out / "summary_seeds.json").read_text())[
        "seeds"
    ] == [0, 1]


def test_the_reference_lm_alone(tmp_path):
    """--objectives none: no training; the reference LM's generation, exact mass and frozen baselines."""
    from rmgap.experiments.hamiltonian import main

    out = tmp_path / "ref"
    argv = [
        "--vertices",
        "5",
        "--edge-prob",
        "0.3",
        "--n-train",
        "6",
        "--n-test",
        "4",
        "--objectives",
        "none",
    ]
    s = main(
        [*argv, "--out", str(out), "--quiet"],
        lm_factory=lambda: make_tiny_lm(max_positions=256, extra_words=(*DIGITS, "Vertices:")),
    )
    assert s["accuracy"] == {"train": {}, "test": {}} and list(s["generation"]) == ["reference"]
    assert s["frozen_baselines"]["n"] == {"train": 6, "test": 4} and "tilt" not in s
    assert s["model"]["vocab_size"] > 0 and (out / "table.md").exists() and not (out / "im_rm").exists()


def test_verification_accuracy_intervals_are_wilsons_of_the_rewards_files(tmp_path):
    from rmgap.experiments.hamiltonian_report import accuracy_ci, read_rewards

    run = tmp_path / "run"
    (run / "ex_rm").mkdir(parents=True)
    rows = [(1.0, 0.0)] * 7 + [(0.0, 1.0)] * 2 + [(0.5, 0.5)] * 2  # 7 right, 2 wrong, 2 ties: k = 8 of 11
    for split in ("train", "test"):
        text = "".join(json.dumps({"reward_chosen": a, "reward_rejected": b}) + "\n" for a, b in rows)
        (run / "ex_rm" / f"rewards_{split}.jsonl").write_text(text)
    from lm_probes.stats import wilson_ci

    ci = accuracy_ci(read_rewards(run, ["ex_rm"]))
    assert ci["test"]["ex_rm"] == list(wilson_ci(8, 11)) and ci["train"] == ci["test"]
