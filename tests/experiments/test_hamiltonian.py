"""Generation (lm_probes.lm.generation), the cycle task as text (lm_probes.data.cycles) and
``rmgap hamiltonian`` end to end, on a tiny model."""

import json

import numpy as np

from tests.conftest import DIGITS, make_tiny_lm


def test_hamiltonian_end_to_end(tmp_path):
    from rmgap.experiments.hamiltonian import main

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
