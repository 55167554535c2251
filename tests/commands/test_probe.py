"""rmgap probe: its report, and the settings it refuses."""

from __future__ import annotations

import json

from lm_probes.common import read_jsonl_rows
from tests.conftest import PROBE_EVALS, PROBE_TRAIN, make_tiny_lm


def _pairs_file(tmp_path):
    """The probe's training triple, then its evaluation pairs, as a pairs file."""
    data = tmp_path / "pairs.jsonl"
    rows = [PROBE_TRAIN[0], *PROBE_EVALS]
    data.write_text(
        "".join(
            json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n" for p in rows
        )
    )
    return data


def test_probe_cli_writes_report(tmp_path):
    from rmgap.commands.probe import main

    data = _pairs_file(tmp_path)
    out = tmp_path / "out"
    s = main(["--data", str(data), "--out", str(out), "--quiet", "--lr", "1e-4"], lm=make_tiny_lm())
    on_disk = json.loads((out / "summary.json").read_text())
    for k in ("pearson", "median_rel_error"):
        assert k in on_disk["head_only"]["im_rm"]
    assert {"pearson_first_order", "pearson_fixed_state"} <= set(on_disk["full"]["im_rm"])
    assert "pearson_first_order" in on_disk["full"]["ex_rm"]
    assert (out / "scatter.png").exists() and (out / "records.csv").read_text().count("\n") == 11
    assert s["n_eval_pairs"] == 5
    lines = read_jsonl_rows(out / "contributions.jsonl.gz")
    assert len(lines) == 10
    c = lines[0]
    assert len(c["im_rm"][0]["plus"]) == len(c["tokens"]) and len(c["im_rm"][0]["plus"][0]) == len(
        c["train_tokens"][0][0]
    )


def test_the_probe_refuses_sdpa(capsys):
    from rmgap.cli import main as rmgap_main

    assert rmgap_main(["probe", "persona", "--attention", "sdpa"]) == 2
    assert "forward-mode" in capsys.readouterr().err


def test_the_probe_refuses_float64_where_the_device_runs_it_badly(monkeypatch, capsys):
    import torch

    from lm_probes.lm.loading import float64_problem
    from rmgap.cli import main

    assert float64_problem("cpu") is None and "no float64" in float64_problem("mps")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "NVIDIA GeForce RTX 4090")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (8, 9))
    assert "sm_89" in float64_problem("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (9, 0))  # H100
    assert float64_problem("cuda:0") is None
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (8, 6))
    assert main(["probe", "persona", "--device", "cuda", "--dtype", "float64"]) == 2
    assert "use --dtype float32" in capsys.readouterr().err


def test_probe_cli_predicts_adams_first_step(tmp_path):
    from rmgap.commands.probe import main

    data = _pairs_file(tmp_path)
    out = tmp_path / "out"
    argv = ["--data", str(data), "--out", str(out), "--quiet", "--lr", "1e-5", "--optimizer", "adam"]
    main(argv, lm=make_tiny_lm())
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["config"]["optimizer"] == "adam"
    assert (
        on_disk["head_only"]["im_rm"]["pearson"] > 0.9999
        and on_disk["head_only"]["ex_rm"]["pearson"] > 0.9999
    )
    assert on_disk["full"]["im_rm"]["pearson_first_order"] > 0.999
