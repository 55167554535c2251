"""The fault suite (issue 23): `rmgap train` on a tiny Llama with an untied head, run as a user would
(a separate process), killed with SIGKILL at several points, out of disk space, pointed at a finished
run, resumed with other data or another model, or given a corrupted checkpoint. Every time: the
uninterrupted result after --resume, or a one-line refusal (exit 2) that leaves the folder as it was.

Faults are injected by a wrapper (``FAULT`` in the environment, read by ``_WRAPPER``) that patches the
running process, so the project's code carries no test hooks."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import EVAL, TRAIN, make_tiny_lm

pytestmark = pytest.mark.slow

# FAULT = "<where>:<n>": kill -9 at the n-th (1-based) occurrence of <where> in the process.
#   write:checkpoint.pt   half of the checkpoint's bytes written to its temporary file
#   replace:<file>        the temporary file of <file> complete, not yet renamed over it
#   after_checkpoint      an epoch's checkpoint written, during the evaluation that follows
#   step                  an optimiser step (mid-epoch)
#   enospc                the checkpoint's write fails for lack of space (OSError 28), not a kill
#   sleep                 at an optimiser step, sleep 30 s (a run that is alive, holding its folder)
_WRAPPER = r"""
import errno, io, os, signal, sys, time
where, n = os.environ["FAULT"].rsplit(":", 1)
n, count = int(n), [0]
def hit():
    count[0] += 1
    return count[0] == n
def die():
    sys.stdout.flush(); sys.stderr.flush(); os.kill(os.getpid(), signal.SIGKILL)
import torch
import lm_probes.rm.checkpoints as ck, lm_probes.rm.trainer as tr, lm_probes.common as common
save, replace, step = torch.save, os.replace, torch.optim.Adam.step
if where in ("write:checkpoint.pt", "enospc"):
    def faulty_save(obj, f, *a, **k):
        if not hit():
            return save(obj, f, *a, **k)
        buf = io.BytesIO(); save(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2]); f.flush()
        if where == "enospc":
            raise OSError(errno.ENOSPC, "No space left on device")
        die()
    ck.torch.save = faulty_save
if where.startswith("replace:"):
    target = where.split(":", 1)[1]
    def faulty_replace(src, dst):
        if os.path.basename(str(dst)) == target and hit():
            die()
        return replace(src, dst)
    ck.os.replace = common.os.replace = faulty_replace
if where == "after_checkpoint":
    real = tr.save_checkpoint
    def after(*a, **k):
        real(*a, **k)
        if hit():
            die()
    tr.save_checkpoint = after
if where in ("step", "sleep"):
    def faulty_step(self, *a, **k):
        if hit():
            time.sleep(30) if where == "sleep" else die()
        return step(self, *a, **k)
    torch.optim.Adam.step = faulty_step
from rmgap.cli import main
sys.exit(main(sys.argv[1:]))
"""

EPOCHS = 3
STEPS_PER_EPOCH = 2  # 4 training pairs, batch 2


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny untied Llama saved as a model folder (another of the same shape, and one with a larger
    vocabulary: another shape), the data files, and an uninterrupted run of each objective."""
    root = tmp_path_factory.mktemp("faults")
    for name, seed, extra in (("model", 0, ()), ("other_model", 1, ()), ("wide_model", 0, ("zzz",))):
        lm = make_tiny_lm(dtype=torch.float32, tie=False, seed=seed, extra_words=extra)
        lm.model.save_pretrained(root / name)
        lm.tokenizer.save_pretrained(root / name)
    rows = lambda pairs: "".join(  # noqa: E731
        json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n" for p in pairs
    )
    (root / "train.jsonl").write_text(rows(TRAIN))
    (root / "other_train.jsonl").write_text(rows(TRAIN[::-1][:3]))
    (root / "test.jsonl").write_text(rows(EVAL["para"] + EVAL["orig"]))
    w = World(root)
    for obj in ("im_rm", "ex_rm"):
        rc, _, err = w.train(root / f"clean_{obj}", obj)
        assert rc == 0 and err == "", err  # (--quiet: no progress bars, no deprecation warnings)
    return w


class World:
    def __init__(self, root: Path):
        self.root = root

    def args(self, out: Path, objective="im_rm", train="train.jsonl", model="model", *extra):
        r = self.root
        return [
            "train", "--model", str(r / model), "--dtype", "float64", "--train", str(r / train),
            "--eval", f"test={r / 'test.jsonl'}", "--objective", objective, "--epochs", str(EPOCHS),
            "--lr", "1e-2", "--batch-size", "2", "--micro-batch", "1", "--out", str(out), "--quiet", *extra,
        ]  # fmt: skip

    def train(self, out, objective="im_rm", *extra, fault=None, train="train.jsonl", model="model"):
        """→ (exit status, stdout, stderr) of `rmgap train` (with a ``fault``: under the wrapper)."""
        cmd = [sys.executable, "-c", _WRAPPER] if fault else [sys.executable, "-m", "rmgap"]
        env = {**os.environ, "FAULT": fault or ""}
        p = subprocess.run(
            [*cmd, *self.args(out, objective, train, model, *extra)],
            capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
        return p.returncode, p.stdout, p.stderr

    def result(self, out: Path) -> dict:
        """What a run computed: its final metrics, history, rewards and digests (no timings)."""
        s = json.loads((out / "summary.json").read_text())
        keep = ("final", "history", "n_train_pairs", "digests", "dropped")
        return {**{k: s[k] for k in keep}, "rewards": (out / "rewards_test.jsonl.gz").read_bytes()}


def _snapshot(folder: Path, lock: bool = True) -> dict:
    """SHA-256 of every file in ``folder`` (``lock``: with the lock file, which names the last run
    that held the folder: a refused resume has held it)."""
    files = [p for p in sorted(folder.iterdir()) if lock or p.name != ".rmgap.lock"]
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("rmgap train: error: "), err
    return lines[0]


@pytest.mark.parametrize(
    "fault",
    [
        "write:checkpoint.pt:2",  # during the epoch-2 checkpoint write
        "replace:checkpoint.pt:3",  # the last checkpoint written, not yet in place
        "after_checkpoint:1",  # during the evaluation after epoch 1 (an intermediate one)
        "after_checkpoint:3",  # during the final evaluation
        "step:4",  # mid-epoch 2
        "replace:history.json:3",  # writing the history after epoch 2
        "replace:summary.json:1",  # writing the final summary
    ],
)
def test_a_killed_run_resumes_to_the_uninterrupted_result(world, tmp_path, fault):
    out = tmp_path / "run"
    rc, _, err = world.train(out, fault=fault)
    assert rc == -9, err
    rc, _, err = world.train(out, "im_rm", "--resume")
    assert rc == 0, err
    assert world.result(out) == world.result(world.root / "clean_im_rm")
    assert [h["epoch"] for h in json.loads((out / "summary.json").read_text())["history"]] == [0, 1, 2, 3]
    assert not list(out.glob(".*tmp*"))  # the killed run's temporary file is cleared by the resume


def test_a_run_killed_before_its_first_checkpoint_says_so_and_starts_over(world, tmp_path):
    out = tmp_path / "run"
    assert world.train(out, fault="step:1")[0] == -9
    rc, _, err = world.train(out, "im_rm", "--resume")
    assert rc == 2 and "nothing to resume (no checkpoint.pt)" in _one_line(err)
    rc, _, err = world.train(out, "im_rm", "--overwrite")
    assert rc == 0, err
    assert world.result(out) == world.result(world.root / "clean_im_rm")


def test_no_space_for_a_checkpoint_keeps_the_previous_one(world, tmp_path):
    """Simulated (OSError 28 mid-write, on any machine): one line, the epoch-1 checkpoint intact, and
    the resume finishes with the uninterrupted result."""
    out = tmp_path / "run"
    rc, _, err = world.train(out, fault="enospc:2")
    assert rc == 2 and "the disk is full" in _one_line(err) and "previous file is kept" in err
    assert torch.load(out / "checkpoint.pt", weights_only=False)["epoch"] == 1
    assert not list(out.glob(".*.tmp"))
    rc, _, err = world.train(out, "im_rm", "--resume")
    assert rc == 0, err
    assert world.result(out) == world.result(world.root / "clean_im_rm")


def test_a_full_disk_keeps_the_previous_checkpoint(world, tmp_path):
    """A real full disk: a tmpfs with room for one checkpoint (skipped where mounting is not allowed)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    size = (world.root / "clean_im_rm" / "checkpoint.pt").stat().st_size
    mount = ["mount", "-t", "tmpfs", "-o", f"size={int(size * 1.5) // 4096 * 4096}", "tmpfs", str(disk)]
    if os.geteuid() != 0 or subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        out = disk / "run"
        rc, _, err = world.train(out)
        assert rc == 2 and "could not be written" in _one_line(err), err
        assert torch.load(out / "checkpoint.pt", weights_only=False)["epoch"] == 1
        subprocess.run(["mount", "-o", f"remount,size={size * 8}", str(disk)], check=True)
        rc, _, err = world.train(out, "im_rm", "--resume")
        assert rc == 0, err
        assert world.result(out) == world.result(world.root / "clean_im_rm")
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


@pytest.mark.parametrize("extra", [(), ("--objective", "ex_rm")])
def test_a_finished_run_folder_is_refused_and_left_bitwise_unchanged(world, tmp_path, extra):
    out = tmp_path / "run"
    shutil.copytree(world.root / "clean_im_rm", out)
    before = _snapshot(out)
    rc, _, err = world.train(out, "im_rm", *extra)
    assert rc == 2 and "holds a run" in _one_line(err) and "--resume" in err
    assert _snapshot(out) == before
    # --overwrite replaces it with the new run alone (no old rewards left beside it)
    (out / "rewards_old.jsonl").write_text("{}\n")
    rc, _, err = world.train(out, "ex_rm", "--overwrite")
    assert rc == 0, err
    assert world.result(out) == world.result(world.root / "clean_ex_rm")
    assert not (out / "rewards_old.jsonl").exists()


@pytest.mark.parametrize("objective", ["im_rm", "ex_rm"])
def test_a_resume_with_other_data_or_another_model_is_refused(world, tmp_path, objective):
    out = tmp_path / "run"
    shutil.copytree(world.root / f"clean_{objective}", out)
    before = _snapshot(out, lock=False)
    rc, _, err = world.train(out, objective, "--resume", train="other_train.jsonl")
    assert rc == 2 and "differs in the training data" in _one_line(err)
    for model in ("other_model", "wide_model"):  # the same shape, another shape
        rc, _, err = world.train(out, objective, "--resume", model=model)
        assert rc == 2 and "the model's initial weights" in _one_line(err), err
    assert _snapshot(out, lock=False) == before


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "text", "history"])
def test_a_corrupted_checkpoint_is_refused(world, tmp_path, damage):
    out = tmp_path / "run"
    shutil.copytree(world.root / "clean_im_rm", out)
    ckpt = out / "checkpoint.pt"
    data = bytearray(ckpt.read_bytes())
    if damage == "flip":  # 8 bytes inside the tensor data (past the archive's first entries)
        at = len(data) // 2
        data[at : at + 8] = bytes(b ^ 0xFF for b in data[at : at + 8])
        ckpt.write_bytes(bytes(data))
    elif damage == "truncate":
        ckpt.write_bytes(bytes(data[: len(data) // 3]))
    elif damage == "empty":
        ckpt.write_bytes(b"")
    elif damage == "text":
        ckpt.write_text("not a checkpoint\n")
    else:
        (out / "history.json").write_text("[{")
    rc, _, err = world.train(out, "im_rm", "--resume")
    line = _one_line(err)
    assert rc == 2 and ("checkpoint.pt" in line or "history.json" in line), line


def test_a_second_run_on_a_live_runs_folder_is_refused(world, tmp_path):
    out = tmp_path / "run"
    live = subprocess.Popen(
        [sys.executable, "-c", _WRAPPER, *world.args(out)],
        env={**os.environ, "FAULT": f"sleep:{STEPS_PER_EPOCH + 1}"},  # alive after its first checkpoint
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        for _ in range(600):
            if (out / "checkpoint.pt").exists():
                break
            time.sleep(0.1)
        for flag in ("--resume", "--overwrite"):
            rc, _, err = world.train(out, "im_rm", flag)
            assert rc == 2 and "another run" in _one_line(err) and str(live.pid) in err, (flag, err)
        assert (out / "checkpoint.pt").exists()  # --overwrite deleted nothing of the live run
    finally:
        live.kill()
        live.wait()


def test_a_shipped_set_replaced_through_rmgap_data_is_recorded_in_the_summary(world, tmp_path):
    over = tmp_path / "data" / "rewardmath"
    over.mkdir(parents=True)
    shutil.copy(world.root / "train.jsonl", over / "test.jsonl")
    argv = world.args(tmp_path / "run")
    argv[argv.index("--train") : argv.index("--train") + 2] = ["--train-set", "rewardmath/test"]
    p = subprocess.run(
        [sys.executable, "-m", "rmgap", *argv], capture_output=True, text=True, timeout=300,
        env={**os.environ, "RMGAP_DATA": str(tmp_path / "data")},
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["data_overrides"] == {"rewardmath/test": str(over / "test.jsonl")}
