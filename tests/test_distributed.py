"""Training under accelerate with 2 CPU processes (DDP over gloo) against 1 process: the same numbers,
a 2-process checkpoint resumed in 1 process, and every experiment command (persona, shifts,
hamiltonian, mitigations) writing the 1-process results from 2 processes (lm_probes.distributed; slow
tier: it launches processes)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lm_probes.common import read_jsonl_rows
from lm_probes.data.pairs import Pair
from tests.conftest import make_tiny_lm, write_shift_datasets

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
    graph_words = (*(str(i) for i in range(10)), "Vertices:")  # (what the Hamiltonian prompts need)
    lm = make_tiny_lm(dtype=__import__("torch").float64, max_positions=256, extra_words=graph_words)
    lm.model.save_pretrained(d / "model")
    lm.tokenizer.save_pretrained(d / "model")
    return d, _write(TRAIN, d / "train.jsonl"), _write(EVAL + TRAIN[:3], d / "test.jsonl")


def _train(setup, out: str, processes: int, *extra: str, **env: str) -> dict:
    d, train, test = setup
    args = [
        "train", "--train", str(train), "--eval", f"test={test}", "--lr", "1e-2", "--batch-size", "4",
        "--micro-batch", "1", *extra,
    ]  # fmt: skip
    _rmgap(d, args, out, processes, **env)
    return json.loads((d / out / "summary.json").read_text())


def _rmgap(
    d: Path, args: list[str], out: str, processes: int, expect: int = 0, model: Path | None = None, **env: str
) -> str:
    """``rmgap ARGS`` on the tiny model in float64, in 1 process or under accelerate launch; asserts
    the exit status (under accelerate launch, any failure's: the launcher's own is 1) → stderr."""
    args = [
        "-m",
        "rmgap",
        *args,
        "--model",
        str(model or d / "model"),
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
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1]), **env}
    p = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode != 0 if expect and processes > 1 else p.returncode == expect, p.stderr[-3000:]
    return p.stderr


def _same(a: dict, b: dict, rel=1e-9) -> None:
    assert [h["epoch"] for h in a["history"]] == [h["epoch"] for h in b["history"]]
    for ha, hb in zip(a["history"], b["history"], strict=True):
        assert (ha["train_loss"] is None) == (hb["train_loss"] is None)
        if ha["train_loss"] is not None:
            assert hb["train_loss"] == pytest.approx(ha["train_loss"], rel=rel)
        for k in ("loss", "rewards/accuracies", "rewards/chosen", "rewards/rejected"):
            assert hb["test"][k] == pytest.approx(ha["test"][k], rel=rel, abs=1e-12)


FSDP = {"RMGAP_FSDP_ON_CPU": "1"}  # torch's fully_shard over the gloo processes (lm_probes.distributed)


def _processes(cell: Path) -> int:
    """How many processes trained the RM whose outputs are in ``cell``."""
    return json.loads((cell / "summary.json").read_text())["processes"]


def _rewards(path: Path) -> list[float]:
    """A rewards_<set>.jsonl.gz file's rewards, chosen and rejected of each pair in turn."""
    rows = read_jsonl_rows(path)
    return [v for r in rows for v in (r["reward_chosen"], r["reward_rejected"])]


def _one_process(setup, out: str, *args) -> dict:
    """The one-process run ``out``, read back where an earlier test trained it (a finished --out is not
    trained into again)."""
    done = setup[0] / out / "summary.json"
    return json.loads(done.read_text()) if done.exists() else _train(setup, out, 1, *args)


@pytest.mark.parametrize("objective", ["im_rm", "ex_rm"])
def test_two_and_three_processes_train_as_one(setup, objective):
    one = _one_process(setup, f"one_{objective}", "--objective", objective, "--epochs", "2")
    for n in (2, 3):
        many = _train(setup, f"n{n}_{objective}", n, "--objective", objective, "--epochs", "2")
        assert one["processes"] == 1 and many["processes"] == n
        _same(one, many)
    # the training moved the rewards (so agreement is not two untouched models agreeing)
    assert one["history"][-1]["test"]["loss"] < 0.95 * one["history"][0]["test"]["loss"]


def test_a_two_process_checkpoint_resumes_in_one_process(setup):
    d = setup[0]
    full = _one_process(setup, "full", "--epochs", "2")
    _train(setup, "split", 2, "--epochs", "1")  # 2 processes, stopped (finished) after epoch 1
    assert (d / "split" / "checkpoint.pt").exists()
    resumed = _train(setup, "split", 1, "--epochs", "2", "--resume")  # continued by 1 process
    _same(full, resumed)
    shutil.rmtree(d / "split")


@pytest.mark.parametrize("objective", ["im_rm", "ex_rm"])
def test_fully_sharded_training_trains_as_one_process(setup, objective):
    one = _one_process(setup, f"one_{objective}", "--objective", objective, "--epochs", "2")
    for n in (2, 3):  # (3: a short step leaves a process one zero-weighted pass, as many as the others)
        sharded = _train(setup, f"fsdp{n}_{objective}", n, "--objective", objective, "--epochs", "2", **FSDP)
        assert sharded["processes"] == n
        _same(one, sharded)


def test_fully_sharded_checkpoints_resume_across_back_ends(setup):
    d = setup[0]
    full = _one_process(setup, "full", "--epochs", "2")
    _train(setup, "fsdp_split", 2, "--epochs", "1", **FSDP)  # gathered to full tensors, main writes
    _same(full, _train(setup, "fsdp_split", 1, "--epochs", "2", "--resume"))  # continued by 1 process
    _train(setup, "plain_split", 1, "--epochs", "1")
    _same(full, _train(setup, "plain_split", 2, "--epochs", "2", "--resume", **FSDP))  # loaded into shards
    shutil.rmtree(d / "fsdp_split")
    shutil.rmtree(d / "plain_split")


def test_what_a_sharded_back_end_cannot_run_is_refused_in_one_line(setup):
    d = setup[0]
    args = ["hamiltonian", "--vertices", "5", "--n-train", "8", "--n-test", "4", "--epochs", "1"]
    err = _rmgap(d, args, "ham_fsdp", 2, expect=2, **FSDP)  # (it samples from the trained, sharded LM)
    assert "rmgap hamiltonian: error: rmgap hamiltonian samples from the trained LMs" in err
    assert not (d / "ham_fsdp").exists()
    # the L2 pull of the head, refused before any mitigation trains
    args = ["mitigations", "--mitigations", "none,unembedding_l2", "--n-train", "4", "--epochs", "1"]
    err = _rmgap(d, args, "mit_fsdp", 2, expect=2, **FSDP)
    assert "rmgap mitigations: error: unembedding_l2 (the L2 pull of the head) is not run" in err
    assert not (d / "mit_fsdp" / "none").exists()


def test_the_persona_experiment_under_two_processes(setup):
    d = setup[0]
    args = ["persona", "--n-train", "6", "--n-test", "4", "--epochs", "1", "--lr", "1e-2"]
    _rmgap(d, args, "persona1", 1)
    _rmgap(d, args, "persona2", 2)
    _rmgap(d, args, "persona_fsdp", 2, **FSDP)
    one = json.loads((d / "persona1" / "table.json").read_text())
    for out in ("persona2", "persona_fsdp"):
        two = json.loads((d / out / "table.json").read_text())
        assert one["table"] == two["table"]
        for obj, sets in one["final"].items():
            for name, m in sets.items():
                assert two["final"][obj][name]["loss"] == pytest.approx(m["loss"], rel=1e-9)


def test_the_shifts_experiment_under_two_processes(setup):
    d = setup[0]
    root = str(write_shift_datasets(d / "shift_data"))
    args = ["shifts", "--n-train", "8", "--n-eval", "5", "--epochs", "1", "--lr", "1e-2", "--n-boot", "200"]
    _rmgap(d, args, "shifts1", 1, RMGAP_DATA=root)
    _rmgap(d, args, "shifts2", 2, RMGAP_DATA=root)
    # an IM-RM mitigation against the 1-process run's EX-RM (copied by the main process only)
    mitigated = [*args, "--mitigation", "token_dropout", "--explicit-from", str(d / "shifts1")]
    _rmgap(d, mitigated, "shifts_td1", 1, RMGAP_DATA=root)
    _rmgap(d, mitigated, "shifts_td2", 2, RMGAP_DATA=root)
    for a, b in (("shifts1", "shifts2"), ("shifts_td1", "shifts_td2")):
        one, two = (json.loads((d / o / "results.json").read_text()) for o in (a, b))
        assert one["eval"].keys() == two["eval"].keys()
        for name, e in one["eval"].items():
            for rm in one["config"]["objectives"]:
                for k in ("accuracy", "normalized_abs_margin", "tie_rate"):
                    assert two["eval"][name][rm][k] == pytest.approx(e[rm][k], rel=1e-9)
                r1, r2 = (_rewards(d / o / rm / f"rewards_{name}.jsonl.gz") for o in (a, b))
                assert r2 == pytest.approx(r1, rel=1e-9)
    assert "mitigation_effect" in json.loads((d / "shifts_td2" / "results.json").read_text())
    assert _processes(d / "shifts2" / "ex_rm") == _processes(d / "shifts_td2" / "im_rm") == 2  # work shared


def test_the_hamiltonian_experiment_under_two_processes(setup):
    d = setup[0]
    args = ["hamiltonian", "--vertices", "5", "--edge-prob", "0.3", "--n-train", "8", "--n-test", "4"]
    args += ["--epochs", "1", "--lr", "1e-3"]
    _rmgap(d, args, "ham1", 1)
    _rmgap(d, args, "ham2", 2)  # one micro-batch per step: the second process takes a zero-weighted one
    one, two = (json.loads((d / o / "summary.json").read_text()) for o in ("ham1", "ham2"))
    assert two["accuracy"] == one["accuracy"] and two["generation"] == one["generation"]
    assert _processes(d / "ham2" / "im_rm") == 2
    for lm, mass in one["generation_mass"].items():  # the exact mass: graphs shared over the processes
        assert two["generation_mass"][lm]["log10"] == pytest.approx(mass["log10"], rel=1e-9)


def test_the_mitigations_experiment_under_two_processes(setup):
    d = setup[0]
    args = ["mitigations", "--n-train", "4", "--n-test", "2", "--probe-statements", "2", "--epochs", "1"]
    _rmgap(d, args, "mit1", 1)
    _rmgap(d, args, "mit2", 2)
    one, two = (json.loads((d / o / "table.json").read_text())["mitigations"] for o in ("mit1", "mit2"))
    assert one.keys() == two.keys()
    for name, t in one.items():
        assert _processes(d / "mit2" / name) == 2
        assert (two[name]["original"], two[name]["paraphrased"]) == (t["original"], t["paraphrased"])
        moves = two[name]["probe"]["moves"]
        assert moves == pytest.approx(t["probe"]["moves"], rel=1e-9), name
        for f in ("rewards_original_test.jsonl.gz", "rewards_paraphrased_test.jsonl.gz"):
            assert _rewards(d / "mit2" / name / f) == pytest.approx(_rewards(d / "mit1" / name / f), rel=1e-9)


def _classifier(d: Path) -> Path:
    """A one-label sequence classifier of the tiny model's shapes (random score head), saved once."""
    import torch
    from transformers import AutoModelForSequenceClassification

    path = d / "classifier"
    if not path.exists():
        torch.manual_seed(0)
        clf = AutoModelForSequenceClassification.from_pretrained(d / "model", num_labels=1)
        clf.config.pad_token_id = 0
        clf.save_pretrained(path)
        shutil.copytree(
            d / "model",
            path,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns("*.safetensors", "config.json"),
        )
    return path


@pytest.mark.parametrize("reward", ["im_rm_no_ref", "ex_rm"])
def test_two_processes_evaluate_as_one(setup, reward):
    """rmgap eval under accelerate launch: each process scores its share, the main one writes the
    files one process writes."""
    d, _, test = setup
    model = _classifier(d) if reward == "ex_rm" else None
    args = ["eval", "--data", f"test={test}", "--data", f"train={setup[1]}", "--reward", reward]
    for n in (1, 2):
        _rmgap(d, args, f"eval{n}_{reward}", n, model=model)
    for name in ("test", "train"):
        one, two = (_rewards(d / f"eval{n}_{reward}" / f"rewards_{name}.jsonl.gz") for n in (1, 2))
        assert len(one) == 2 * (4 if name == "test" else len(TRAIN)) and len(set(one)) > 2
        assert two == pytest.approx(one, rel=1e-12, abs=1e-12)
    res = [json.loads((d / f"eval{n}_{reward}" / "results.json").read_text()) for n in (1, 2)]
    # (each process scores other batches: rewards agree to rounding, 1e-12 above, and so do the metrics)
    assert _nested_approx(res[1]["sets"], res[0]["sets"]) and [r["processes"] for r in res] == [1, 2]


def _nested_approx(a, b, rel: float = 1e-12) -> bool:
    """Equal nests of dicts and lists whose numbers agree within ``rel`` (the rest exactly)."""
    if isinstance(a, dict):
        same = isinstance(b, dict) and a.keys() == b.keys()
        return same and all(_nested_approx(a[k], b[k], rel) for k in a)
    if isinstance(a, list):
        same = isinstance(b, list) and len(a) == len(b)
        return same and all(_nested_approx(x, y, rel) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=rel, abs=rel)
    return a == b
