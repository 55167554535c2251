"""Shared fixtures: a tiny randomly initialised Llama with a word-level tokenizer (offline, fast), the
small preference sets several test files use, and a helper that runs ``python -m rmgap`` as a user."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from lm_probes.data.cycles import add_graph_tokens
from lm_probes.data.pairs import Pair
from lm_probes.probe.one_step import ProbeConfig, run_probe

WORDS = (
    "is the following statement something you would say ? i like people kindness matters "
    "a truthful reply yes considering statement , say no sure never my response be certainly "
    "absolutely lean toward not really nope judgement : answer"
).split()

# what the EX-GRM's verification prompt and answers need in the word-level vocabulary
GRM_WORDS = ("Question:", "Answer:", "Verification:", "Is", "correct", "(Yes/No)?", "Yes", "No")


def make_tiny_lm(dtype=torch.float64, tie=True, seed=0, max_positions=64, extra_words=()):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from lm_probes.lm.loading import LoadedLM
    from lm_probes.lm.numerics import keep_rms_norms_in_dtype
    from lm_probes.lm.numerics import register as register_attention

    words = ["<pad>", "<unk>", "<user>", "<assistant>", *dict.fromkeys([*WORDS, *extra_words])]
    vocab = {w: i for i, w in enumerate(words)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>")
    tok.chat_template = "{% for m in messages %}<user> {{ m['content'] }} {% endfor %}<assistant> "
    cfg = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        tie_word_embeddings=tie,
        attn_implementation="eager",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).to(dtype).eval()
    model.set_attn_implementation(register_attention())
    keep_rms_norms_in_dtype(model)
    info = dict(
        model="tiny-llama",
        dtype=str(dtype).split(".")[-1],
        device="cpu",
        tied_head=tie,
        vocab_size=len(vocab),
        hidden_size=32,
        max_positions=max_positions,
        chat_template=True,
    )
    return LoadedLM(model, tok, info)


@pytest.fixture
def tiny_lm():
    return make_tiny_lm()


def _text(rng, n):
    return " ".join(rng.choice(WORDS, n))


def _write(root, name, split, rows):
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / name / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_shift_datasets(root, n_rows: int = 12):
    """Synthetic stand-ins of the datasets rmgap shifts reads, under ``root`` (use with RMGAP_DATA): rows 0
    and 1 of each test set have a long response (9 words; the others 3). → root."""
    from rmgap.experiments.shifts import REWRITES

    rng = np.random.default_rng(0)
    uf = []
    for i in range(n_rows):
        n = 9 if i < 2 else 3
        uf.append({"prompt": _text(rng, 3), "chosen": _text(rng, n), "rejected": _text(rng, 3)})
    _write(root, "ultrafeedback", "test", uf)
    for name in REWRITES:
        rows = [
            {
                "orig_index": i,
                "prompt": r["prompt"],
                "chosen": _text(rng, 9 if i < 2 else 3),
                "rejected": _text(rng, 3),
                "orig_chosen": r["chosen"],
                "orig_rejected": r["rejected"],
            }
            for i, r in enumerate(uf)
        ]
        _write(root, name, "test", rows)
        train = [
            {**r, "orig_chosen": _text(rng, 3), "orig_rejected": _text(rng, 3), "prompt": _text(rng, 3)}
            for r in rows
        ]
        _write(root, name, "train", train)
    for name in ("rewardbench_math", "rewardbench_code", "rewardmath"):
        rows = [
            {"prompt": _text(rng, 3), "chosen": _text(rng, 9 if i < 2 else 3), "rejected": _text(rng, 3)}
            for i in range(n_rows)
        ]
        _write(root, name, "test", rows)
    _write(root, "rewardmath", "train", [{"prompt": "is the", "chosen": "yes", "rejected": "no"}] * 2)
    return root


# --- shared by several test files ---------------------------------------------------------------

PROBE_TRAIN = [
    Pair("i like people", "a truthful reply is yes", "considering the statement , i say no", "train", "t0")
]


PROBE_EVALS = [
    Pair("kindness matters", "a truthful reply is yes", "considering the statement , i say no", "same", "e0"),
    Pair(
        "kindness matters", "my response would be certainly", "i lean toward not really", "paraphrase", "e0"
    ),
    Pair(
        "i like the statement",
        "a truthful reply is sure",
        "considering the statement , i say never",
        "overlap",
        "e1",
    ),
    Pair("people matters", "my response would be absolutely", "i lean toward nope", "paraphrase", "e2"),
    Pair("you would say", "a truthful reply is yes", "considering the statement , i say no", "same", "e3"),
]


@pytest.fixture(scope="module")
def tiny_probe():
    lm = make_tiny_lm()
    return run_probe(lm, PROBE_TRAIN, PROBE_EVALS, ProbeConfig(lr=1e-5, progress=False))


TRAIN = [
    Pair(q, "a truthful reply is yes", "considering the statement , i say no", "train", f"t{i}")
    for i, q in enumerate(["i like people", "kindness matters", "people matters", "you would say"])
]


EVAL = {
    "para": [
        Pair("i like the statement", "my response would be certainly", "i lean toward nope", "para", "e0")
    ],
    "orig": TRAIN[:2],
}


REWRITE = ("my response would be certainly", "i lean toward nope")


REWRITE_TRAIN = [
    Pair(q, "a truthful reply is yes", "considering the statement , i say no", "train", f"t{i}", REWRITE)
    for i, q in enumerate(["i like people", "kindness matters", "people matters", "you would say"])
]


DIGITS = tuple(str(d) for d in range(10))


def graph_lm(seed=0):
    return add_graph_tokens(
        make_tiny_lm(max_positions=256, extra_words=(*DIGITS, "Vertices:", "Edges:")), seed=seed
    )


def run_rmgap(*args, env=None):
    """Run ``python -m rmgap ARGS`` as a user would → (exit status, stdout, stderr)."""
    p = subprocess.run(
        [sys.executable, "-m", "rmgap", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )
    return p.returncode, p.stdout, p.stderr


def real_step(lm, name: str, optimizer, lr: float, model=None, head_only: bool = False) -> np.ndarray:
    """Δr of every PROBE_EVALS response after one real ``optimizer`` step (a torch.optim class) on
    PROBE_TRAIN, taken on ``model`` (default: a copy of ``lm.model``; its parameters that require a
    gradient, and u for a type with a head), or with ``head_only`` on the output head alone."""
    import copy

    from lm_probes.data.pairs import encode_pairs
    from lm_probes.lm.encoding import pad_id_of
    from lm_probes.lm.scoring import score
    from lm_probes.rm.rewards import RewardParams, get_reward_type, initial_head

    rt, pad = get_reward_type(name), pad_id_of(lm.tokenizer)
    model = copy.deepcopy(lm.model) if model is None else model

    def encs(pairs):
        return [e for pr in encode_pairs(lm.tokenizer, pairs, chat_template=True).encodings for e in pr]

    tr, ev = encs(PROBE_TRAIN), encs(PROBE_EVALS)
    u = initial_head(lm.info["hidden_size"], 0, torch.float64).requires_grad_(True) if rt.uses_head else None

    def params(e):
        with torch.no_grad():
            ref = score(lm.model, e, pad).logprob if rt.uses_reference else None
        return RewardParams(0.01, u, ref)

    p_tr, p_ev = params(tr), params(ev)
    with torch.no_grad():
        before = rt.score(model, ev, pad, p_ev).numpy()
    trained = [p for p in model.parameters() if p.requires_grad] + ([u] if u is not None else [])
    if head_only:
        trained = [model.get_output_embeddings().weight]
    opt = optimizer(trained, lr=lr)
    r = rt.score(model, tr, pad, p_tr)
    rt.loss(r[0::2], r[1::2]).mean().backward()
    opt.step()
    with torch.no_grad():
        return rt.score(model, ev, pad, p_ev).numpy() - before
