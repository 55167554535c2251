"""Issue 23's user-caused conditions, each refused in one line with exit status 2, before a model loads
and without writing anything (in-process: rmgap.cli.main, as the console script runs it)."""

from __future__ import annotations

import gzip
import json

import pytest

from lm_probes.rm.checkpoints import check_run
from rmgap.cli import main

ROW = {"prompt": "p", "chosen": "a", "rejected": "b"}


@pytest.fixture
def files(tmp_path):
    (tmp_path / "ok.jsonl").write_text((json.dumps(ROW) + "\n") * 3)
    (tmp_path / "dup.jsonl").write_text('{"prompt": "p", "chosen": "a", "rejected": "b", "chosen": "c"}\n')
    (tmp_path / "surrogate.jsonl").write_text('{"prompt": "p\\ud800", "chosen": "a", "rejected": "b"}\n')
    (tmp_path / "folder.jsonl").mkdir()
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "ok.jsonl").write_text((json.dumps(ROW) + "\n") * 3)
    (tmp_path / "nomodel").mkdir()
    (tmp_path / "notok").mkdir()
    (tmp_path / "notok" / "config.json").write_text("{}")
    (tmp_path / "data" / "rewardmath").mkdir()
    (tmp_path / "data" / "rewardmath" / "test.jsonl.gz").write_bytes(
        gzip.compress(b"x" * 100)[:-8] + b"garbage!"
    )
    return tmp_path


CASES = {  # name → (argv with {d} for the folder, what the one line says)
    "duplicate key": ("train --train {d}/dup.jsonl", "dup.jsonl:1: field 'chosen' appears twice"),
    "lone surrogate": (
        "train --train {d}/surrogate.jsonl",
        "surrogate.jsonl:1: field 'prompt' holds \\ud800",
    ),
    "folder as --train": (
        "train --train {d}/folder.jsonl",
        "folder.jsonl: a folder, but not a Hugging Face datasets folder",
    ),
    "two sets, one name": (
        "train --train {d}/ok.jsonl --eval t={d}/ok.jsonl --eval t={d}/ok.jsonl",
        "'t' is already",
    ),
    "two files, one stem": (
        "train --train {d}/ok.jsonl --eval {d}/ok.jsonl --eval {d}/data/ok.jsonl",
        "the name 'ok' is already another set's",
    ),
    "a history key as a set": ("train --train {d}/ok.jsonl --eval epoch={d}/ok.jsonl", "'epoch' is reserved"),
    "the loss as a set": (
        "train --train {d}/ok.jsonl --eval train_loss={d}/ok.jsonl",
        "'train_loss' is reserved",
    ),
    "epochs negative": ("train --train {d}/ok.jsonl --epochs -1", "epochs (--epochs) must be an integer ≥ 1"),
    "batch size 0": ("train --train {d}/ok.jsonl --batch-size 0", "batch_size (--batch-size) must be"),
    "seed -1": ("train --train {d}/ok.jsonl --seed -1", "seed (--seed) must be"),
    "unknown device": ("train --train {d}/ok.jsonl --device foo --out {d}/o", "--device 'foo': not a device"),
    "absent device": ("train --train {d}/ok.jsonl --device cuda:3 --out {d}/o", "CUDA device(s)"),
    "cuda, none here": ("train --train {d}/ok.jsonl --device cuda --out {d}/o", "CUDA device(s)"),
    "missing model folder": (
        "train --train {d}/ok.jsonl --model {d}/none --out {d}/o",
        "no such model folder",
    ),
    "no config": ("train --train {d}/ok.jsonl --model {d}/nomodel --out {d}/o", "no config.json"),
    "no tokenizer": (
        "train --train {d}/ok.jsonl --model {d}/notok --out {d}/o",
        "no tokenizer in the folder",
    ),
    "--out is a file": ("train --train {d}/ok.jsonl --out {d}/a_file", "a_file: a file, not a folder"),
    "probe --out is a file": ("probe --data {d}/ok.jsonl --out {d}/a_file", "a_file: a file, not a folder"),
    "--out under a file": ("train --train {d}/ok.jsonl --out {d}/a_file/run", "cannot be written"),
    "--out read-only": ("train --train {d}/ok.jsonl --out /proc/rmgap-run", "cannot be written"),  # root too
    "probe --out read-only": ("probe --data {d}/ok.jsonl --out /proc/rmgap-run", "cannot be written"),
    "nothing to resume": ("train --train {d}/ok.jsonl --out {d}/o --resume", "nothing to resume"),
    "resume and overwrite": ("train --train {d}/ok.jsonl --out {d}/o --resume --overwrite", "give one"),
    "negative lr as a value": (
        "train --train {d}/ok.jsonl --lr -1e-3",
        "lr (--lr) must be a finite number > 0",
    ),
    "probe lr nan": ("probe --data {d}/ok.jsonl --lr nan", "lr (--lr) must be a finite number"),
    "argparse": ("train --train {d}/ok.jsonl --bogus", "unrecognized arguments: --bogus (rmgap train -h"),
    "argparse, missing value": ("train --batch-size", "--batch-size: expected one argument"),
    "corrupt gz override": ("train --train-set rewardmath/test", "test.jsonl.gz: not a readable gzip file"),
}


def _exit_status(argv) -> int:
    """rmgap's exit status, as the console script gives it (argparse exits by SystemExit)."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("case", list(CASES))
def test_a_user_caused_condition_is_one_line(files, capsys, monkeypatch, case):
    monkeypatch.setenv("RMGAP_DATA", str(files / "data"))
    monkeypatch.chdir(files)  # (nothing may be written here either)
    argv, says = CASES[case]
    before = sorted(p.name for p in files.rglob("*"))
    assert _exit_status(argv.format(d=files).split()) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("rmgap "), err
    assert says in err, err
    assert sorted(p.name for p in files.rglob("*")) == before  # nothing created


def test_a_probe_refuses_a_folder_holding_a_run_before_loading(files, capsys):
    (files / "o").mkdir()
    (files / "o" / "summary.json").write_text("{}")
    assert main(["probe", "--data", str(files / "ok.jsonl"), "--out", str(files / "o")]) == 2
    assert "holds a run (summary.json)" in capsys.readouterr().err


def test_rmgap_data_names_what_rmgap_data_replaces(files, capsys, monkeypatch):
    monkeypatch.setenv("RMGAP_DATA", str(files / "data"))
    assert main(["data", "--verify"]) == 0
    out = capsys.readouterr().out
    assert "replaces 1 of them (read unchecked)" in out and "rewardmath/test" in out


def test_check_run_names_what_differs():
    run = {"train": "a", "eval": {"x": "1", "y": "2"}, "model": "m", "mixed_precision": "no"}
    check_run("c.pt", {"run": run}, dict(run))  # the same run: nothing to say
    check_run("c.pt", {}, run)  # a checkpoint from before digests: unchecked
    for change, says in (
        ({"mixed_precision": "bf16"}, "--mixed-precision (no → bf16)"),
        ({"eval": {"x": "1", "y": "3"}}, "evaluation set(s) y"),
        ({"eval": {"x": "1"}}, "evaluation set(s) y"),
        ({"train": "b"}, "the training data"),
        ({"model": "n"}, "the model's initial weights"),
    ):
        with pytest.raises(ValueError, match="written by another run") as e:
            check_run("c.pt", {"run": run}, {**run, **change})
        assert says in str(e.value)
