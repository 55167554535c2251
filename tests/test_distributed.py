"""Training under accelerate with 2 CPU processes (DDP over gloo) against 1 process: the same numbers,
and a 2-process checkpoint resumed in 1 process (lm_probes.distributed; slow tier: it launches
processes)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lm_probes.data import Pair
from tests.conftest import make_tiny_lm

pytestmark = pytest.mark.slow

QUESTIONS = ["i like people", "kindness matters", "people matters", "you would say", "say something"]
# 10 pairs in micro-batches of 1, 4 per step: steps of 4, 4 and 2 micro-batches; with 3 processes the
# last step leaves one process without a micro-batch (it takes part with a zero-weighted one)
TRAIN = [
    Pair(q, "a truthful reply is yes", "considering the statement , i say no", "train", f"t{i}")
    for i, q in enumerate(QUESTIONS)
] + [Pair(q, "sure , absolutely", "never , not really", "train", f"u{i}") for i, q in enumerate(QUESTIONS)]
EVAL = [Pair("i like the statement", "my response would be certainly", "i lean toward nope", "test", "e0")]


def _write(pairs, path: Path) -> Path:
    path.write_text(
        "".join(json.dumps(dict(prompt=p.prompt, chosen=p.chosen, rejected=p.rejected)) + "\n" for p in pairs)
    )
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp")
    lm = make_tiny_lm(dtype=__import__("torch").float64, max_positions=256)
    lm.model.save_pretrained(d / "model")
    lm.tokenizer.save_pretrained(d / "model")
    return d, _write(TRAIN, d / "train.jsonl"), _write(EVAL + TRAIN[:3], d / "test.jsonl")


def _train(setup, out: str, processes: int, *extra: str) -> dict:
    d, train, test = setup
    args = [
        "train", "--train", str(train), "--eval", f"test={test}", "--lr", "1e-2", "--batch-size", "4",
        "--micro-batch", "1", *extra,
    ]  # fmt: skip
    _rmgap(d, args, out, processes)
    return json.loads((d / out / "summary.json").read_text())


def _rmgap(d: Path, args: list[str], out: str, processes: int) -> None:
    """``rmgap ARGS`` on the tiny model in float64, in 1 process or under accelerate launch."""
    args = [
        "-m",
        "rmgap",
        *args,
        "--model",
        str(d / "model"),
        "--dtype",
        "float64",
        "--quiet",
        "--out",
        str(d / out),
    ]
    if processes > 1:  # accelerate's torchrun launcher (its --cpu flag would pick its mpirun one)
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes"]
        args = [*launch, str(processes), "--num_machines", "1", "--mixed_precision", "no", *args]
    else:
        args = [sys.executable, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    p = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-3000:]


def _same(a: dict, b: dict, rel=1e-9) -> None:
    assert [h["epoch"] for h in a["history"]] == [h["epoch"] for h in b["history"]]
    for ha, hb in zip(a["history"], b["history"], strict=True):
        assert (ha["train_loss"] is None) == (hb["train_loss"] is None)
        if ha["train_loss"] is not None:
            assert hb["train_loss"] == pytest.approx(ha["train_loss"], rel=rel)
        for k in ("loss", "rewards/accuracies", "rewards/chosen", "rewards/rejected"):
            assert hb["test"][k] == pytest.approx(ha["test"][k], rel=rel, abs=1e-12)


@pytest.mark.parametrize("objective", ["im_rm", "ex_rm"])
def test_two_and_three_processes_train_as_one(setup, objective):
    one = _train(setup, f"one_{objective}", 1, "--objective", objective, "--epochs", "2")
    for n in (2, 3):
        many = _train(setup, f"n{n}_{objective}", n, "--objective", objective, "--epochs", "2")
        assert one["processes"] == 1 and many["processes"] == n
        _same(one, many)
    # the training moved the rewards (so agreement is not two untouched models agreeing)
    assert one["history"][-1]["test"]["loss"] < 0.95 * one["history"][0]["test"]["loss"]


def test_a_two_process_checkpoint_resumes_in_one_process(setup):
    d = setup[0]
    full = _train(setup, "full", 1, "--epochs", "2")
    _train(setup, "split", 2, "--epochs", "1")  # 2 processes, stopped (finished) after epoch 1
    assert (d / "split" / "checkpoint.pt").exists()
    resumed = _train(setup, "split", 1, "--epochs", "2", "--resume")  # continued by 1 process
    _same(full, resumed)
    shutil.rmtree(d / "split")


def test_the_persona_experiment_under_two_processes(setup):
    d = setup[0]
    args = ["persona", "--n-train", "6", "--n-test", "4", "--epochs", "1", "--lr", "1e-2"]
    _rmgap(d, args, "persona1", 1)
    _rmgap(d, args, "persona2", 2)
    one, two = (json.loads((d / o / "table.json").read_text()) for o in ("persona1", "persona2"))
    assert one["table"] == two["table"]
    for obj, sets in one["final"].items():
        for name, m in sets.items():
            assert two["final"][obj][name]["loss"] == pytest.approx(m["loss"], rel=1e-9)
