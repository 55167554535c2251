"""LoRA (lm_probes.rm.lora) in training: only the adapters (and u) move, the checkpoint holds them alone,
a resume continues the same run, the export is the merged model plus a peft adapter folder that peft
itself loads, and what cannot apply is refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lm_probes.common import read_jsonl_rows
from lm_probes.rm.checkpoints import read_checkpoint
from lm_probes.rm.config import TrainConfig
from lm_probes.rm.lora import adapter_state, apply_lora, is_adapter, merged_state, parse_lora, remove_lora
from lm_probes.rm.trainer import train_reward_model
from rmgap.commands.eval import main as eval_main
from rmgap.commands.export import main as export_main
from rmgap.commands.train import main as train_main
from tests.conftest import EVAL, TRAIN, make_tiny_lm

SPEC = "4,8,q_proj+v_proj"


def _cfg(objective="im_rm", **kw):
    return TrainConfig(
        objective=objective, epochs=2, lr=1e-2, batch_size=4, micro_batch=2, progress=False, lora=SPEC, **kw
    )


@pytest.mark.parametrize("objective", ["im_rm", "ex_rm"])
def test_only_the_adapters_train_and_the_checkpoint_holds_them_alone(objective, tmp_path):
    lm = make_tiny_lm()
    base = {k: v.clone() for k, v in lm.model.state_dict().items()}
    s = train_reward_model(lm, TRAIN, EVAL, _cfg(objective), tmp_path).summary
    assert s["history"][-1]["train_loss"] < s["history"][1]["train_loss"]
    assert s["config"]["lora"] == SPEC
    after = lm.model.state_dict()
    for k, v in base.items():  # every base weight bitwise as it was (under its peft name)
        assert torch.equal(after[k if k in after else k.replace(".weight", ".base_layer.weight")], v)
    moved = adapter_state(lm.model)
    assert any(torch.count_nonzero(v) for k, v in moved.items() if ".lora_B." in k)
    state = read_checkpoint(tmp_path / "checkpoint.pt")
    assert set(state["model"]) == set(moved) and all(is_adapter(k) for k in state["model"])
    assert (state["u"] is not None) == (objective == "ex_rm")


def test_a_resume_continues_the_same_lora_run(tmp_path):
    full = train_reward_model(make_tiny_lm(), TRAIN, EVAL, _cfg(), tmp_path / "a").summary
    one = TrainConfig(**{**_cfg().__dict__, "epochs": 1})
    train_reward_model(make_tiny_lm(), TRAIN, EVAL, one, tmp_path / "b")
    longer = train_reward_model(make_tiny_lm(), TRAIN, EVAL, _cfg(), tmp_path / "b", resume=True).summary
    assert np.isclose(longer["final"]["orig"]["loss"], full["final"]["orig"]["loss"], rtol=1e-9)
    # another adapter shape, or none, is another run: refused (by its initial weights' digest first)
    for other in ("4,16,q_proj+v_proj", "8,16,q_proj+v_proj", None):
        cfg = TrainConfig(**{**_cfg().__dict__, "lora": other})
        with pytest.raises(ValueError, match=r"another run|different configuration"):
            train_reward_model(make_tiny_lm(), TRAIN, EVAL, cfg, tmp_path / "b", resume=True)


def test_merged_state_is_the_adapted_model():
    lm = make_tiny_lm()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    apply_lora(lm.model, parse_lora(SPEC))
    for k, v in adapter_state(lm.model).items():
        torch.nn.init.normal_(v) if ".lora_B." in k else None
    with torch.no_grad():
        want = lm.model(ids).logits
    merged = merged_state(lm.model)
    plain = make_tiny_lm()
    plain.model.load_state_dict(merged)  # (strict: the base architecture's names exactly)
    with torch.no_grad():
        assert torch.allclose(plain.model(ids).logits, want, rtol=1e-12, atol=1e-12)
    remove_lora(lm.model)
    with torch.no_grad():  # the base model back, unmerged
        assert torch.equal(lm.model(ids).logits, make_tiny_lm().model(ids).logits)


def _train_and_export(tmp_path, objective: str):
    """A tiny untied base saved as a folder, a LoRA RM of ``objective`` trained on it with --export
    (hf/); → (the base LoadedLM, the export's metadata)."""
    lm = make_tiny_lm(dtype=torch.float32, tie=False)
    lm.model.save_pretrained(tmp_path / "base")
    lm.tokenizer.save_pretrained(tmp_path / "base")
    rows = "".join(json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n"
                   for p in TRAIN)  # fmt: skip
    (tmp_path / "train.jsonl").write_text(rows)
    train_main([
        "--model", str(tmp_path / "base"), "--quiet", "--train", str(tmp_path / "train.jsonl"),
        "--eval", f"test={tmp_path / 'train.jsonl'}", "--objective", objective, "--epochs", "2",
        "--lr", "1e-2", "--batch-size", "2", "--micro-batch", "1", "--lora", "4,8,q_proj,v_proj",
        "--out", str(tmp_path / "run"), "--export", str(tmp_path / "hf"),
    ])  # fmt: skip
    return lm, json.loads((tmp_path / "hf" / "rmgap_export.json").read_text())


def _eval_gives_the_runs_rewards(tmp_path, folder: str, objective: str) -> dict:
    """rmgap eval of the exported ``folder`` on the training file: the run's own rewards (1e-5)."""
    res = eval_main([
        "--model", str(tmp_path / folder), "--reward", objective,
        "--data", f"test={tmp_path / 'train.jsonl'}", "--out", str(tmp_path / f"ev-{folder}"), "--quiet",
    ])  # fmt: skip
    want = read_jsonl_rows(tmp_path / "run" / "rewards_test.jsonl.gz")
    got = read_jsonl_rows(tmp_path / f"ev-{folder}" / "rewards_test.jsonl.gz")
    for w, g in zip(want, got, strict=True):
        assert g["reward_chosen"] == pytest.approx(w["reward_chosen"], abs=1e-5)
        assert g["reward_rejected"] == pytest.approx(w["reward_rejected"], abs=1e-5)
    return res


def test_the_export_is_the_merged_model_and_peft_loads_its_adapters(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    lm, meta = _train_and_export(tmp_path, "im_rm")
    assert meta["lora"] == SPEC and meta["lora_adapter"] == "lora_adapter"
    res = _eval_gives_the_runs_rewards(tmp_path, "hf", "im_rm")
    assert res["ref"] == str(tmp_path / "base")
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base"),
                                     tmp_path / "hf" / "lora_adapter")  # fmt: skip
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    with torch.no_grad():
        assert torch.allclose(peft(ids).logits, merged(ids).logits, atol=1e-5)
        assert not torch.allclose(peft(ids).logits, lm.model(ids).logits, atol=1e-3)  # (the adapters moved)
    # rmgap export of the same run from the base model alone gives the same weights
    export_main([str(tmp_path / "run"), "--out", str(tmp_path / "hf2"), "--model", str(tmp_path / "base")])
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "hf2")
    for (k, a), b in zip(merged.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_a_lora_ex_rm_exports_as_a_classifier_that_gives_the_runs_rewards(tmp_path):
    _, meta = _train_and_export(tmp_path, "ex_rm")
    assert meta["loads_with"] == "AutoModelForSequenceClassification" and meta["lora_adapter"] is None
    # rmgap export from the base model alone: the checkpoint's adapters merged into a fresh base (the
    # trained model holds its adapters already, so only this path checks the merge)
    export_main([str(tmp_path / "run"), "--out", str(tmp_path / "hf2"), "--model", str(tmp_path / "base")])
    _eval_gives_the_runs_rewards(tmp_path, "hf2", "ex_rm")
    # another base of the same shape (no file digest to tell them apart): refused by the run's θ0 digest
    other = make_tiny_lm(dtype=torch.float32, tie=False, seed=1)
    other.model.save_pretrained(tmp_path / "other")
    other.tokenizer.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="initial-weights digest differs"):
        export_main(
            [str(tmp_path / "run"), "--out", str(tmp_path / "hf3"), "--model", str(tmp_path / "other")]
        )


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("8", "give r,alpha,targets"),
        ("0,16,q_proj", "r must be ≥ 1"),
        ("8,16,embed_tokens", "output head or an embedding"),
        ("8,16,no_such_proj", "--lora 8,16,no_such_proj: "),
    ],
)
def test_what_cannot_apply_is_refused_in_one_line(spec, match):
    with pytest.raises(ValueError, match=match) as e:
        train_reward_model(make_tiny_lm(), TRAIN, EVAL, TrainConfig(lora=spec, progress=False))
    assert "\n" not in str(e.value)


def test_lora_takes_no_freeze():
    with pytest.raises(ValueError, match="no freeze or unembedding_l2"):
        _cfg(freeze="unembedding").check()


def test_an_experiment_trains_lora_adapters_and_resumes_from_its_files(tmp_path):
    """rmgap persona --lora: each RM records the adapter spec; a --resume reads the finished RMs back
    (the same spec) and refuses to call another spec the same run."""
    from rmgap.experiments.persona import main
    from tests.experiments.test_mitigations import PERSONA_WORDS

    topics = "people kindness matters like sure never yes no answer statement truthful reply".split()
    rows = [{"question": f"would you say ? i like {w}", "answer_matching_behavior": " Yes"} for w in topics]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    argv = ["--persona-file", str(tmp_path / "p.jsonl"), "--n-train", "4", "--n-test", "2", "--epochs", "1"]
    argv += ["--lr", "1e-2", "--out", str(tmp_path / "o"), "--quiet", "--lora", "4,8,q_proj,v_proj"]
    factory = lambda: make_tiny_lm(max_positions=96, extra_words=PERSONA_WORDS)  # noqa: E731
    res = main(argv, lm_factory=factory)
    for obj in ("ex_rm", "im_rm"):
        assert json.loads((tmp_path / "o" / obj / "summary.json").read_text())["config"]["lora"] == SPEC
    assert res["final"]["im_rm"]["original_train"]["loss"] < np.log(2)  # (it trained)
    again = main([*argv, "--resume"], lm_factory=lambda: pytest.fail("a finished RM was trained again"))
    assert again["table"] == res["table"]
    other = [*argv[:-1], "8,16,q_proj,v_proj", "--resume"]
    with pytest.raises(ValueError, match=r"another run|different configuration"):
        main(other, lm_factory=factory)


def _tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    return GPT2LMHeadModel(cfg).double().eval()


@pytest.mark.parametrize("targets", ["c_attn", "all-linear"])
def test_merged_state_transposes_conv1d_layers(targets):
    """GPT-2's Conv1D stores W as (in, out) (peft's fan_in_fan_out): the merge follows peft's delta."""
    model, ids = _tiny_gpt2(), torch.tensor([[1, 2, 3, 4, 5]])
    apply_lora(model, parse_lora(f"2,4,{targets}"))
    for k, v in adapter_state(model).items():
        torch.nn.init.normal_(v) if ".lora_B." in k else None
    with torch.no_grad():
        want = model(ids).logits
    plain = _tiny_gpt2()
    plain.load_state_dict(merged_state(model))
    with torch.no_grad():
        assert torch.allclose(plain(ids).logits, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("spec", ["4,8,q_proj+input_layernorm", "4,8,model.embed_tokens", "4,8,no_such_proj"])
def test_a_refused_spec_leaves_the_model_as_it_was(spec):
    lm = make_tiny_lm()
    lm.model.model.norm.weight.requires_grad_(False)  # (a flag the refusal must not reset)
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    flags = [p.requires_grad for p in lm.model.parameters()]
    with pytest.raises(ValueError, match="--lora"):
        apply_lora(lm.model, parse_lora(spec))
    assert list(lm.model.state_dict()) == list(before) and not hasattr(lm.model, "peft_config")
    assert [p.requires_grad for p in lm.model.parameters()] == flags


def test_adapters_twice_are_refused_and_removal_restores_each_flag():
    lm = make_tiny_lm()
    lm.model.model.norm.weight.requires_grad_(False)
    flags = [p.requires_grad for p in lm.model.parameters()]
    apply_lora(lm.model, parse_lora(SPEC))
    with pytest.raises(ValueError, match="has LoRA adapters already"):
        apply_lora(lm.model, parse_lora(SPEC))
    remove_lora(lm.model)
    assert [p.requires_grad for p in lm.model.parameters()] == flags


@pytest.mark.parametrize(
    ("spec", "match"), [("4,inf,q_proj", "alpha finite"), ("4,8,all-linear+q_proj", "alone")]
)
def test_more_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_lora(spec)


def test_a_finished_cell_of_another_configuration_is_not_resumed(tmp_path):
    from lm_probes.rm.checkpoints import check_finished

    (tmp_path / "summary.json").write_text(json.dumps({"config": {"objective": "im_rm", "lr": 1e-2}}))
    check_finished(tmp_path / "summary.json", TrainConfig(lr=1e-2))  # (unrecorded fields: defaults)
    with pytest.raises(ValueError, match="finished with another lora; refusing"):
        check_finished(tmp_path / "summary.json", TrainConfig(lr=1e-2, lora=SPEC))
