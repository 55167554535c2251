"""The model-family matrix (issue 26): tiny random models of the paper's architectures and one the code
does not special-case, each saved as a Hugging Face folder and loaded as a user's model is
(lm_probes.lm.loading.load_lm), through the probe (head-only prediction = observation, exact first
order against the real step, for im_rm and ex_rm) and ``rmgap train`` (im_rm and ex_rm). A family that
cannot do something says so in one line: Gemma-2's final-logit soft-capping makes logits ≠ W·h, so the
probe gives it exact first order and the full step but no fixed-state prediction or head-only step
(``fixed_state_skipped`` says why); its training and every experiment work."""

from __future__ import annotations

import json
import os

import pytest
import torch

from lm_probes.lm.loading import load_lm
from lm_probes.probe.one_step import ProbeConfig, run_probe
from tests.conftest import PROBE_EVALS, PROBE_TRAIN, TRAIN, make_tiny_lm

DEVICE = os.environ.get("RMGAP_TEST_DEVICE", "cpu")  # (benchmarks/gpu_run.sh runs the matrix on cuda)
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
        # (their configs' default special ids, 32 000 and 50 256, lie outside the tiny vocabulary: set
        # as a real folder's are; GPT-2 with pad == EOS == BOS, Phi-3 with EOS ≠ pad)
        "phi3": (T.Phi3Config, T.Phi3ForCausalLM, dict(gqa, pad_token_id=0, bos_token_id=1, eos_token_id=2)),
        "gpt2": (
            T.GPT2Config,
            T.GPT2LMHeadModel,
            dict(n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0, pad_token_id=0),
        ),
    }


FAMILIES = list(_families())


def _words() -> tuple:
    """Every word the experiments' tiny data use (Persona, the EX-GRM's template, graphs, math)."""
    from tests.conftest import DIGITS, GRM_WORDS
    from tests.experiments.test_mitigations import PERSONA_WORDS
    from tests.experiments.test_robustness import EXTRA

    return (*PERSONA_WORDS, *GRM_WORDS, *DIGITS, "Vertices:", *EXTRA)


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    root, tok = tmp_path_factory.mktemp("families"), make_tiny_lm(extra_words=_words()).tokenizer
    out = {}
    for name, (config, model, options) in _families().items():
        torch.manual_seed(0)
        positions = {"n_positions": 256} if name == "gpt2" else {"max_position_embeddings": 256}
        model(config(vocab_size=len(tok), **positions, **options)).save_pretrained(root / name)
        tok.save_pretrained(root / name)
        out[name] = root / name
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_the_probe_on_every_family(family_dirs, family):
    lm = _load(family_dirs, family)
    cfg = ProbeConfig(lr=1e-5, progress=False)
    s = run_probe(lm, PROBE_TRAIN, PROBE_EVALS, cfg)["summary"]
    if family == "gemma2":  # logits ≠ W·h: exact first order and the full step only, and why
        assert "final_logit_softcapping" in s["fixed_state_skipped"] and "head_only" not in s
        for rm in ("im_rm", "ex_rm"):
            assert s["full"][rm]["pearson_first_order"] > 0.999, (rm, s["full"][rm])
            assert "fixed_state" not in s["full"][rm]
        return
    assert s["fixed_state_skipped"] is None
    for rm in ("im_rm", "ex_rm"):
        assert s["head_only"][rm]["pearson"] > 0.9999, (family, rm, s["head_only"][rm])
        assert s["full"][rm]["pearson_first_order"] > 0.999, (family, rm, s["full"][rm])


@pytest.mark.parametrize("family", FAMILIES)
def test_pairs_share_their_prompt_on_every_family(family_dirs, family):
    """Scoring with shared prompts (prompts of different lengths in one right-padded pass, the KV cache
    gathered per response, positions continued; training takes it for pairs with long prompts) gives
    every family the rewards and gradients of whole sequences. Gemma-2's sliding window keeps one
    prompt length a pass."""
    from lm_probes.lm.encoding import pad_id_of
    from lm_probes.lm.scoring import _sliding_window, prompt_batches, score
    from tests.lm.test_scoring import _loss_and_grads, _pairs_of_uneven_prompts

    lm = _load(family_dirs, family)
    encs, pad = _pairs_of_uneven_prompts(lm.tokenizer), pad_id_of(lm.tokenizer)
    assert _sliding_window(lm.model) == (family == "gemma2")
    assert len(prompt_batches(encs, 16, _sliding_window(lm.model))) == (3 if family == "gemma2" else 1)
    got = {}
    for mode in ("cached", "whole"):
        sc = score(lm.model, encs, pad, mode=mode, answer_ids=(3, 4))
        got[mode] = (sc, *_loss_and_grads(lm.model, sc))
    (c, c_loss, c_grad), (w, w_loss, w_grad) = got["cached"], got["whole"]
    for name in ("logprob", "last_hidden", "mean_hidden", "answer_logprob"):
        assert torch.allclose(getattr(c, name), getattr(w, name), rtol=0, atol=1e-10), (family, name)
    assert torch.allclose(c_loss, w_loss, rtol=0, atol=1e-10) and c_grad.keys() == w_grad.keys()
    # Gemma-2's RMSNorm runs in float32 (x.float()) inside a float64 model: the prompt's gradient, summed
    # over its two responses in another order, agrees to 1e-7 of its size there, to 1e-15 elsewhere
    tol = 1e-6 if family == "gemma2" else 1e-12
    for n in c_grad:
        err = (c_grad[n] - w_grad[n]).abs().max() / w_grad[n].abs().max().clamp_min(1e-30)
        assert err < tol, (family, n, float(err))


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
            "--device",
            DEVICE,
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


def _persona_file(tmp_path):
    topics = "people kindness matters like sure never yes no answer statement truthful reply".split()
    rows = [{"question": f"would you say ? i like {w}", "answer_matching_behavior": " Yes"} for w in topics]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return tmp_path / "p.jsonl"


def _experiment_argv(name: str, tmp_path) -> list[str]:
    """One small run of each experiment: one epoch, a few pairs (the experiments' own tests' sizes)."""
    if name == "persona":
        argv = ["--persona-file", str(_persona_file(tmp_path)), "--n-train", "4", "--n-test", "2"]
        return [*argv, "--objectives", "ex_rm,im_rm,ex_grm", "--epochs", "1"]
    if name == "hamiltonian":
        return ["--vertices", "5", "--edge-prob", "0.3", "--n-train", "4", "--n-test", "2", "--epochs", "1"]
    if name == "mitigations":
        argv = ["--persona-file", str(_persona_file(tmp_path)), "--n-train", "4", "--n-test", "2"]
        return [*argv, "--probe-statements", "2", "--epochs", "1", "--mitigations", "none,token_dropout"]
    from tests.conftest import WORDS

    rows = [
        {"prompt": f"is it true ? {w}", "chosen": f"yes , it is {w} therefore", "rejected": f"{bad} {w}"}
        for w in WORDS[:10]
        for bad in ("no it is not", "nope")
    ]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return ["--train-set", str(tmp_path / "t.jsonl"), "--quick", "--seeds", "0"]


EXPERIMENTS = ("persona", "hamiltonian", "mitigations", "robustness")


def _tokenizer_of(folder):
    """The folder's own tokenizer.json. transformers 5 builds a Qwen2 folder's tokenizer as
    Qwen2Tokenizer from the vocabulary alone, discarding tokenizer.json's pre-tokenizer (cf.
    huggingface/transformers#44462): the tests' word-level vocabulary then tokenises to nothing. A real
    Qwen2 folder's tokenizer is Qwen2's own, so only a foreign tokenizer in a Qwen2 folder meets this."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_file=str(folder / "tokenizer.json"), pad_token="<pad>", unk_token="<unk>"
    )


def _load(family_dirs, family):
    """The family's folder as a user's model (float64, on DEVICE), with Qwen2's own tokenizer.json."""
    lm = load_lm(str(family_dirs[family]), dtype="float64", device=DEVICE, quiet=True)
    if family == "qwen2":  # see _tokenizer_of
        lm.tokenizer = _tokenizer_of(family_dirs[family])
    return lm


def test_a_qwen2_folder_with_a_foreign_tokenizer_is_rebuilt_by_transformers(family_dirs):
    """The behaviour _tokenizer_of works around, pinned so that a transformers change shows."""
    lm = load_lm(str(family_dirs["qwen2"]), quiet=True)
    assert lm.tokenizer("yes no", add_special_tokens=False)["input_ids"] == []
    assert _tokenizer_of(family_dirs["qwen2"])("yes no", add_special_tokens=False)["input_ids"] != []


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_every_experiment_on_every_family(family_dirs, family, experiment, tmp_path):
    """Each experiment end to end on each family, loaded from its folder; what a family cannot do is
    refused in one line (Gemma-2's soft-capped logits, where an experiment runs the probe)."""
    import importlib

    main = importlib.import_module(f"rmgap.experiments.{experiment}").main
    argv = [*_experiment_argv(experiment, tmp_path), "--out", str(tmp_path / "run"), "--quiet"]

    def factory():
        return _load(family_dirs, family)

    if family == "qwen2" and experiment == "hamiltonian":  # (its config and tokenizer name no EOS)
        with pytest.raises(ValueError, match="this model has none") as exc:
            main(argv, lm_factory=factory)
        assert "\n" not in str(exc.value)
        return
    res = main(argv, lm_factory=factory)
    assert res and (tmp_path / "run").is_dir()
