"""rmgap train: the precision check prints and writes its numbers."""

from __future__ import annotations

import json

import torch

from tests.conftest import TRAIN, make_tiny_lm


def test_the_precision_check_command_prints_and_writes_its_numbers(tmp_path, capsys):
    from rmgap.commands.train import main as train_main

    data = tmp_path / "pairs.jsonl"
    data.write_text(
        "".join(json.dumps(dict(prompt=p.prompt, chosen=p.chosen, rejected=p.rejected)) + "\n" for p in TRAIN)
    )
    out = tmp_path / "check"
    argv = ["--train", str(data), "--objective", "im_rm", "--precision-check", "--out", str(out), "--quiet"]
    res = train_main(argv, lm=make_tiny_lm(dtype=torch.float32))
    saved = json.loads((out / "precision_check.json").read_text())
    assert saved["mixed_reference"]["mean_abs_margin"] == res["mixed_reference"]["mean_abs_margin"] > 0
    assert "rmgap train" in saved["command"] and not (out / "checkpoint.pt").exists()  # nothing trained
    assert "mixed_reference" in capsys.readouterr().out
