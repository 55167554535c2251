"""The model-family matrix (issue 26): tiny random models of the paper's architectures and one the code
does not special-case, each saved as a Hugging Face folder and loaded as a user's model is
(lm_probes.lm.loading.load_lm), through the probe (head-only prediction = observation, exact first
order against the real step, for im_rm and ex_rm) and ``rmgap train`` (im_rm and ex_rm). A family that
cannot do something is refused in one line: Gemma-2's final-logit soft-capping makes logits ≠ W·h, so
the probe (whose fixed-state prediction needs W·h) refuses it; its training works."""

from __future__ import annotations

import json

import pytest
import torch

from lm_probes.lm.loading import load_lm
from lm_probes.lm.scoring import HeadMismatchError
from lm_probes.probe.one_step import ProbeConfig, run_probe
from tests.conftest import PROBE_EVALS, PROBE_TRAIN, TRAIN, make_tiny_lm

SIZE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


def _families() -> dict:
    """name → (config class, model class, config options): Pythia (GPT-NeoX, untied head), Llama (tied
    and untied), Qwen2, Gemma-2, Phi-3 and GPT-2 (neither special-cased anywhere in rmgap)."""
    import transformers as T

    gqa = dict(SIZE, num_key_value_heads=2)
    return {
        "gpt_neox": (T.GPTNeoXConfig, T.GPTNeoXForCausalLM, dict(SIZE, tie_word_embeddings=False)),
        "llama_tied": (T.LlamaConfig, T.LlamaForCausalLM, dict(gqa, tie_word_embeddings=True)),
        "llama_untied": (T.LlamaConfig, T.LlamaForCausalLM, dict(gqa, tie_word_embeddings=False)),
        "qwen2": (T.Qwen2Config, T.Qwen2ForCausalLM, dict(gqa, tie_word_embeddings=True)),
        "gemma2": (T.Gemma2Config, T.Gemma2ForCausalLM, dict(gqa, head_dim=8)),
        "phi3": (T.Phi3Config, T.Phi3ForCausalLM, dict(gqa, pad_token_id=0)),
        "gpt2": (T.GPT2Config, T.GPT2LMHeadModel, dict(n_embd=32, n_layer=2, n_head=4)),
    }


FAMILIES = list(_families())


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    root, tok = tmp_path_factory.mktemp("families"), make_tiny_lm().tokenizer
    out = {}
    for name, (config, model, options) in _families().items():
        torch.manual_seed(0)
        positions = {"n_positions": 96} if name == "gpt2" else {"max_position_embeddings": 96}
        model(config(vocab_size=len(tok), **positions, **options)).save_pretrained(root / name)
        tok.save_pretrained(root / name)
        out[name] = root / name
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_the_probe_on_every_family(family_dirs, family):
    lm = load_lm(str(family_dirs[family]), dtype="float64", quiet=True)
    cfg = ProbeConfig(lr=1e-5, progress=False)
    if family == "gemma2":
        with pytest.raises(HeadMismatchError, match="final_logit_softcapping") as exc:
            run_probe(lm, PROBE_TRAIN, PROBE_EVALS, cfg)
        assert "\n" not in str(exc.value)
        return
    s = run_probe(lm, PROBE_TRAIN, PROBE_EVALS, cfg)["summary"]
    for rm in ("im_rm", "ex_rm"):
        assert s["head_only"][rm]["pearson"] > 0.9999, (family, rm, s["head_only"][rm])
        assert s["full"][rm]["pearson_first_order"] > 0.999, (family, rm, s["full"][rm])


@pytest.mark.parametrize("family", FAMILIES)
def test_rmgap_train_on_every_family(family_dirs, family, tmp_path):
    from rmgap.commands.train import main

    rows = "".join(
        json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n" for p in TRAIN
    )
    (tmp_path / "t.jsonl").write_text(rows)
    for objective in ("im_rm", "ex_rm"):
        argv = [
            "--model",
            str(family_dirs[family]),
            "--dtype",
            "float64",
            "--train",
            str(tmp_path / "t.jsonl"),
        ]
        argv += ["--objective", objective, "--epochs", "3", "--lr", "1e-2", "--batch-size", "2"]
        argv += ["--micro-batch", "1", "--out", str(tmp_path / objective), "--quiet"]
        s = main(argv)
        losses = [h["train"]["loss"] for h in s["history"]]
        assert all(map(torch.isfinite, torch.tensor(losses))) and losses[-1] < losses[0], (
            family,
            objective,
            losses,
        )
