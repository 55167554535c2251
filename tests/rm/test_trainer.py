"""lm_probes.rm.trainer: every objective trains; ties before training; resume; dropped pairs; NaN loss."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lm_probes.common import read_jsonl_rows
from lm_probes.data.pairs import Pair, encode_pairs
from lm_probes.reports import write_training
from lm_probes.rm.config import TrainConfig
from lm_probes.rm.evaluation import ACCURACY, METRICS
from lm_probes.rm.reward_model import RewardModel
from lm_probes.rm.rewards import REWARDS
from lm_probes.rm.trainer import train_reward_model
from tests.conftest import EVAL, GRM_WORDS, TRAIN, make_tiny_lm


@pytest.mark.parametrize("objective", list(REWARDS))
def test_every_objective_fits_its_training_pairs(objective, tmp_path):
    cfg = TrainConfig(objective=objective, epochs=3, lr=1e-2, batch_size=4, micro_batch=2, progress=False)
    lm = make_tiny_lm(extra_words=GRM_WORDS if REWARDS[objective].answers else ())
    result = train_reward_model(lm, TRAIN, EVAL, cfg)
    write_training(result, tmp_path)
    s = result.summary
    assert s["history"][0]["epoch"] == 0 and len(s["history"]) == 4
    assert s["history"][-1]["train_loss"] < s["history"][1]["train_loss"]
    assert s["final"]["orig"][ACCURACY] == 1.0
    assert set(s["final"]["para"]) == set(METRICS)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["config"]["objective"] == objective and on_disk["model"]["model"] == "tiny-llama"
    rows = read_jsonl_rows(tmp_path / "rewards_orig.jsonl.gz")
    assert len(rows) == 2 and rows[0]["where"] == "t0"
    assert (tmp_path / "learning_curves.png").exists()


def test_untrained_im_rm_ties_everywhere():
    rm = RewardModel(make_tiny_lm(), TrainConfig(objective="im_rm"))
    encs = [e for pr in encode_pairs(rm.lm.tokenizer, TRAIN).encodings for e in pr]
    rm.fill_reference(encs)
    with torch.no_grad():
        r = rm.rewards(encs)
    assert torch.count_nonzero(r) == 0  # π_θ = π_ref: every reward is exactly 0


def test_untrained_im_rm_ties_in_evaluation():
    """Epoch-0 evaluation of an IM-RM: every reward exactly 0 (references from the same batches). The tiny
    model is too small for batch composition to change its rounding; the SmolLM2 twin of this test in
    tests/test_smollm2.py is the one that fails if references are computed in other batches."""
    lm = make_tiny_lm(dtype=torch.float32)
    many = {
        "orig": [
            Pair(p.prompt + " " + w, p.chosen, p.rejected, "orig", p.where)
            for p in TRAIN
            for w in ("people", "kindness", "you", "say", "like")
        ]
    }
    s = train_reward_model(lm, TRAIN, many, TrainConfig(objective="im_rm", epochs=0, progress=False)).summary
    h0 = s["history"][0]["orig"]
    assert h0["rmgap/tie_rate"] == 1.0 and h0[ACCURACY] == 0.5 and h0["rewards/margins"] == 0.0
    assert h0["rewards/accuracies"] == 0.0  # TRL's strict accuracy: a tie is not a win


def test_resume_continues_where_it_stopped(tmp_path):
    cfg = TrainConfig(objective="ex_rm", epochs=2, lr=1e-2, batch_size=4, micro_batch=2, progress=False)
    full = train_reward_model(make_tiny_lm(), TRAIN, EVAL, cfg, tmp_path / "a").summary
    one_epoch = TrainConfig(**{**cfg.__dict__, "epochs": 1})
    train_reward_model(make_tiny_lm(), TRAIN, EVAL, one_epoch, tmp_path / "b")
    # a checkpoint written with another configuration is refused (fewer epochs than it has: too)
    for other in (TrainConfig(**{**cfg.__dict__, "lr": 1e-3}), TrainConfig(**{**cfg.__dict__, "epochs": 0})):
        with pytest.raises(ValueError, match="different configuration"):
            train_reward_model(make_tiny_lm(), TRAIN, EVAL, other, tmp_path / "b", resume=True)
    # a finished 1-epoch run continued for 2 epochs is the 2-epoch run (constant lr, per-epoch seeds)
    longer = train_reward_model(make_tiny_lm(), TRAIN, EVAL, cfg, tmp_path / "b", resume=True).summary
    assert longer["history"][-1]["train_loss"] == pytest.approx(full["history"][-1]["train_loss"], rel=1e-9)
    assert np.isclose(longer["final"]["orig"]["loss"], full["final"]["orig"]["loss"], rtol=1e-9)
    # resuming the same configuration after a completed epoch reproduces the uninterrupted run
    part = tmp_path / "c"
    train_reward_model(make_tiny_lm(), TRAIN, EVAL, cfg, part)
    resumed = train_reward_model(make_tiny_lm(), TRAIN, EVAL, cfg, part, resume=True).summary
    assert np.isclose(resumed["final"]["orig"]["loss"], full["final"]["orig"]["loss"], rtol=1e-9)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_a_resumed_run_takes_its_reference_tables_from_the_checkpoint(tmp_path, monkeypatch, dropout):
    """No reference pass on --resume (the checkpoint holds ln π_ref of every training and evaluation
    encoding), except the training set's per-token terms, which token dropout needs and it lacks."""
    from dataclasses import replace

    from lm_probes.rm.reward_model import RewardModel

    kw = dict(epochs=2, lr=1e-2, batch_size=4, micro_batch=2, token_dropout=dropout, progress=False)
    cfg = TrainConfig(objective="im_rm", **kw)
    full = train_reward_model(make_tiny_lm(), TRAIN, EVAL, cfg).summary
    train_reward_model(make_tiny_lm(), TRAIN, EVAL, replace(cfg, epochs=1), tmp_path)
    with monkeypatch.context() as m:
        m.setattr(RewardModel, "fill_eval_reference", lambda *a: pytest.fail("evaluation reference redone"))
        if not dropout:
            m.setattr(RewardModel, "fill_reference", lambda *a: pytest.fail("training reference recomputed"))
        resumed = train_reward_model(make_tiny_lm(), TRAIN, EVAL, cfg, tmp_path, resume=True).summary
    assert resumed["final"]["orig"]["loss"] == pytest.approx(full["final"]["orig"]["loss"], rel=1e-9)
    assert resumed["history"][-1]["train_loss"] == pytest.approx(full["history"][-1]["train_loss"], rel=1e-9)
    # other evaluation pairs than the checkpoint's: no table for them, refused in one line
    other = {**EVAL, "orig": TRAIN[2:]}
    with pytest.raises(ValueError, match=r"evaluation set\(s\) orig\); refusing to resume"):
        train_reward_model(make_tiny_lm(), TRAIN, other, replace(cfg, epochs=3), tmp_path, resume=True)


def test_a_run_stopped_during_its_last_evaluation_resumes_without_retraining(tmp_path, monkeypatch):
    import lm_probes.rm.trainer as train_mod

    cfg = TrainConfig(objective="im_rm", epochs=2, lr=1e-2, batch_size=4, micro_batch=2, progress=False)
    full = train_reward_model(make_tiny_lm(), TRAIN, EVAL, cfg, tmp_path / "a").summary
    real = train_mod.evaluate_sets

    def stop_at_the_end(rm, ev, epoch=None, tokens=False):
        if epoch == 2:
            raise KeyboardInterrupt
        return real(rm, ev, epoch, tokens)

    monkeypatch.setattr(train_mod, "evaluate_sets", stop_at_the_end)
    with pytest.raises(KeyboardInterrupt):
        train_reward_model(make_tiny_lm(), TRAIN, EVAL, cfg, tmp_path / "b")
    monkeypatch.setattr(train_mod, "evaluate_sets", real)
    monkeypatch.setattr(train_mod, "length_buckets", None)  # resuming must not train again
    resumed = train_reward_model(make_tiny_lm(), TRAIN, EVAL, cfg, tmp_path / "b", resume=True).summary
    assert [h["epoch"] for h in resumed["history"]] == [0, 1, 2]
    assert resumed["history"][2]["train_loss"] == full["history"][2]["train_loss"]
    assert np.isclose(resumed["final"]["orig"]["loss"], full["final"]["orig"]["loss"], rtol=1e-9)


def test_too_long_and_identical_pairs_are_dropped_and_reported():
    lm = make_tiny_lm()
    long_pair = Pair("i like people " * 30, "yes", "no", "train", "long.jsonl:3")
    same = Pair("i like people", "yes", "yes", "train", "same.jsonl:5")
    cfg = TrainConfig(epochs=1, batch_size=4, micro_batch=2, progress=False)
    s = train_reward_model(lm, [*TRAIN, long_pair, same], EVAL, cfg).summary
    dropped = s["dropped"]["train"]
    assert s["n_train_pairs"] == 4 and len(dropped["too_long"]) == 1 and len(dropped["identical"]) == 1
    assert "long.jsonl:3" in dropped["too_long"][0] and "same.jsonl:5" in dropped["identical"][0]


def test_nan_loss_is_a_clear_error():
    lm = make_tiny_lm()
    with torch.no_grad():
        next(lm.model.parameters()).fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="non-finite reward on evaluation set 'para' at epoch 0"):
        train_reward_model(
            lm,
            TRAIN,
            EVAL,
            TrainConfig(objective="ex_rm", epochs=1, batch_size=4, micro_batch=2, progress=False),
        )


def test_the_trainer_steps_with_torchs_fused_adam_where_it_has_one(monkeypatch):
    """lm_probes.rm.trainer.adam: fused on CPU (one pass per parameter: benchmarks/adam.py), the same
    step as the default Adam to float32 rounding; the plain Adam where torch has no fused kernel."""
    from lm_probes.rm import trainer

    torch.manual_seed(0)
    start, grad = torch.randn(64, 32), torch.randn(64, 32)
    steps = {}
    for name, make in (
        ("fused", lambda ps: trainer.adam(ps, 1e-2)),
        ("plain", lambda ps: torch.optim.Adam(ps, lr=1e-2)),
    ):
        p = torch.nn.Parameter(start.clone())
        opt = make([p])
        for _ in range(3):
            p.grad = grad.clone()
            opt.step()
        steps[name] = (opt, p.detach())
    assert steps["fused"][0].defaults["fused"] is True
    torch.testing.assert_close(steps["fused"][1], steps["plain"][1], rtol=1e-6, atol=1e-7)
    assert not torch.equal(steps["fused"][1], start)

    real = torch.optim.Adam.__init__

    def no_fused(self, params, *a, fused=None, **kw):
        if fused:
            raise RuntimeError(
                "`fused=True` requires all the params to be floating point Tensors of supported devices"
            )
        real(self, params, *a, **kw)

    monkeypatch.setattr(torch.optim.Adam, "__init__", no_fused)
    assert not trainer.adam([torch.nn.Parameter(start.clone())], 1e-2).defaults.get("fused")


def test_the_trainer_makes_its_optimizer_with_adam(monkeypatch):
    from lm_probes.rm import trainer

    made, real = [], trainer.adam
    monkeypatch.setattr(trainer, "adam", lambda ps, lr: made.append(lr) or real(ps, lr))
    cfg = TrainConfig(objective="im_rm", epochs=1, lr=1e-2, batch_size=4, micro_batch=2, progress=False)
    train_reward_model(make_tiny_lm(), TRAIN, EVAL, cfg)
    assert made == [1e-2]
