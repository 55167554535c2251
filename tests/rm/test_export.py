"""rmgap train --export, then rmgap eval of the export: an IM-RM (AutoModelForCausalLM, its reference
and β from the metadata) and an EX-RM (AutoModelForSequenceClassification) give the training run's own
evaluation rewards, on a tiny Llama with an untied head."""

from __future__ import annotations

import json

import pytest
import torch

from lm_probes.common import read_jsonl_rows
from rmgap.commands.eval import main as eval_main
from rmgap.commands.export import main as export_main
from rmgap.commands.train import main as train_main
from tests.conftest import EVAL, TRAIN, make_tiny_lm


@pytest.mark.parametrize("objective", ["im_rm", "ex_rm"])
def test_an_exported_rm_gives_the_training_runs_rewards(tmp_path, objective):
    lm = make_tiny_lm(dtype=torch.float32, tie=False)
    lm.model.save_pretrained(tmp_path / "base")
    lm.tokenizer.save_pretrained(tmp_path / "base")
    rows = lambda ps: "".join(  # noqa: E731
        json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n" for p in ps
    )
    (tmp_path / "train.jsonl").write_text(rows(TRAIN))
    (tmp_path / "test.jsonl").write_text(rows(EVAL["para"] + EVAL["orig"]))
    common = ["--model", str(tmp_path / "base"), "--quiet"]
    train_main([
        *common, "--train", str(tmp_path / "train.jsonl"), "--eval", f"test={tmp_path / 'test.jsonl'}",
        "--objective", objective, "--epochs", "2", "--lr", "1e-2", "--batch-size", "2", "--micro-batch", "1",
        "--out", str(tmp_path / "run"), "--export", str(tmp_path / "hf"),
    ])  # fmt: skip
    meta = json.loads((tmp_path / "hf" / "rmgap_export.json").read_text())
    res = eval_main([
        "--model", str(tmp_path / "hf"), "--reward", objective, "--data", f"test={tmp_path / 'test.jsonl'}",
        "--out", str(tmp_path / "ev"), "--quiet",
    ])  # fmt: skip
    if objective == "im_rm":  # the reference and β were read from the export's metadata
        assert meta["loads_with"] == "AutoModelForCausalLM" and res["from_export"] == ["beta", "ref"]
        assert res["ref"] == str(tmp_path / "base") and res["beta"] == 0.01
    else:
        assert meta["loads_with"] == "AutoModelForSequenceClassification"
    want, got = (read_jsonl_rows(tmp_path / f / "rewards_test.jsonl.gz") for f in ("run", "ev"))
    for w, g in zip(want, got, strict=True):
        assert g["reward_chosen"] == pytest.approx(w["reward_chosen"], abs=1e-5)
        assert g["reward_rejected"] == pytest.approx(w["reward_rejected"], abs=1e-5)
    assert set(res["sets"]["test"]) >= {"accuracy_strict", "accuracy_ties_half", "tie_rate", "accuracy_ci95"}
    if objective == "im_rm":  # the export as TRL's DPO policy: DPOTrainer's own rewards are the run's
        _trl_rewards_are_the_runs(tmp_path, meta, want)
    # --compare reads the training run beside the eval and says so
    comp = eval_main(["--compare", str(tmp_path / "run"), str(tmp_path / "ev"), "--out", str(tmp_path / "c")])
    c = comp["sets"]["test"]
    assert c["max_abs_reward_diff"] <= 1e-5 and c["n_pairs"] == len(want) and c["winner"] == "tie"
    assert comp["a"]["reward"] == objective and c["diff_accuracy_ties_half"] == 0

    # the same run exported afterwards by rmgap export (as an experiment's cell is) is the same model
    export_main([str(tmp_path / "run"), "--out", str(tmp_path / "hf2"), *common])
    later = json.loads((tmp_path / "hf2" / "rmgap_export.json").read_text())
    assert {k: v for k, v in later.items() if k != "command"} == {
        k: v for k, v in meta.items() if k != "command"
    }
    from safetensors.torch import load_file

    a, b = (load_file(tmp_path / d / "model.safetensors") for d in ("hf", "hf2"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_export_refuses_what_is_not_a_finished_run(tmp_path):
    from tests.conftest import run_rmgap

    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "summary.json").write_text("{}")
    for run, message in [
        (tmp_path, "not a finished training folder (no summary.json)"),
        (tmp_path / "half", "no checkpoint.pt to export"),
    ]:
        code, _, err = run_rmgap("export", str(run), "--out", str(tmp_path / "hf"))
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "hf").exists()


def _trl_rewards_are_the_runs(tmp_path, meta, want):
    """The exported IM-RM loaded by AutoModelForCausalLM as TRL's DPOTrainer policy, the base as its
    ref_model, β from rmgap_export.json: TRL's per-example β·(log π − log π_ref) (compute_ref_log_probs
    on both) are the training run's evaluation rewards."""
    from types import SimpleNamespace

    pytest.importorskip("trl")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.commands.test_eval_anchors import _trl_dpo_trainer

    def load(path):
        return SimpleNamespace(
            model=AutoModelForCausalLM.from_pretrained(path).eval(),
            tokenizer=AutoTokenizer.from_pretrained(path),
        )

    policy, ref = load(tmp_path / "hf"), load(meta["reference"]["model"])
    trainer = _trl_dpo_trainer(tmp_path, policy, ref, meta["beta"], EVAL["para"] + EVAL["orig"])
    batch = next(iter(trainer.get_eval_dataloader()))
    with torch.no_grad():
        pol = trainer.compute_ref_log_probs(trainer.model, batch)
        rf = trainer.compute_ref_log_probs(trainer.ref_model, batch)
    trl = torch.stack([meta["beta"] * (pol[i] - rf[i]) for i in (0, 1)], dim=1).double()
    ours = torch.tensor([[w["reward_chosen"], w["reward_rejected"]] for w in want], dtype=torch.float64)
    assert torch.allclose(trl, ours, atol=1e-6, rtol=0), (trl, ours)
