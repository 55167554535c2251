"""rmgap transform: the shifted pairs in the rewrites' schema, the dose report, and one-line errors."""

from __future__ import annotations

import json

from rmgap.commands.transform import main
from tests.conftest import run_rmgap


def test_transform_writes_the_rewrites_schema_and_the_dose(tmp_path, capsys):
    src = tmp_path / "pairs.jsonl"
    rows = [
        {"prompt": "Say it.", "chosen": "It is not 1000 but 2000.", "rejected": "I am sure it is 1000."},
        {"prompt": "Again.", "chosen": "Nothing to change here", "rejected": "Nor here"},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "shifted.jsonl"
    report = main(["--data", str(src), "--transform", "contractions", "--seed", "1", "--out", str(out)])
    shifted = [json.loads(line) for line in out.read_text().splitlines()]
    assert [set(r) for r in shifted] == [{"prompt", "chosen", "rejected", "orig_chosen", "orig_rejected"}] * 2
    assert shifted[0]["chosen"] == "It's not 1000 but 2000."
    assert shifted[0]["rejected"] == "I'm sure it's 1000."
    assert shifted[1]["chosen"] == rows[1]["chosen"] and shifted[0]["orig_chosen"] == rows[0]["chosen"]
    assert report["counts"] == dict(rows=2, rows_changed=1, responses_refused=0, sites=3, sites_changed=3)
    assert report["fraction_rows_changed"] == 0.5
    assert 0 < report["quality"]["token_overlap"] < 1
    assert json.loads((tmp_path / "shifted.jsonl.report.json").read_text())["counts"] == report["counts"]
    assert "1 changed" in capsys.readouterr().out
    same = main(["--data", str(src), "--transform", "contractions:0", "--out", str(tmp_path / "id.jsonl")])
    assert same["counts"]["rows_changed"] == 0 and same["quality"]["token_overlap"] == 1.0


def test_transform_list_and_bad_input(tmp_path):
    code, out, err = run_rmgap("transform", "--list")
    assert code == 0 and "latex_macros" in out and "contractions" in out
    shipped = ("transform", "--set", "rewardmath/test", "--out", "x", "--transform")
    code, out, err = run_rmgap(*shipped, "shuffle")
    assert code == 2 and err.strip().startswith("rmgap transform: error: unknown transformation 'shuffle'")
    code, out, err = run_rmgap(*shipped, "contractions:2")
    assert code == 2 and "strength must be in [0, 1]" in err and "Traceback" not in err
