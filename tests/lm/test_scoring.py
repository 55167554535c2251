"""lm_probes.lm.scoring, states and numerics: encoding, the one scoring path, states, attention."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lm_probes.data.pairs import Pair, encode_pairs
from lm_probes.lm.encoding import ScoringError, encode, pad_id_of
from lm_probes.lm.scoring import HeadMismatchError, head_is_linear, score
from lm_probes.lm.states import extract_states, forward
from tests.conftest import PROBE_EVALS, make_tiny_lm


def test_encode_concatenates_separate_tokenisations_and_flags_merges(tiny_lm):
    tok = tiny_lm.tokenizer
    e = encode(tok, "i like people", "a truthful reply is yes")
    assert e.response_ids == tuple(tok("a truthful reply is yes", add_special_tokens=False)["input_ids"])
    assert tok.convert_ids_to_tokens(list(e.input_ids[: e.prompt_len]))[0] == "<user>"
    assert not e.boundary_merged
    # no space between prompt and response: joint tokenisation merges "<assistant>" and "yes"
    e2 = encode(tok, "i like people", "yes", chat_template=False)
    assert e2.boundary_merged


@pytest.mark.parametrize("response,match", [("", "empty response"), ("   ", "empty response")])
def test_encode_rejects_empty_responses_naming_the_row(tiny_lm, response, match):
    with pytest.raises(ScoringError, match=f"data.jsonl:7: {match}"):
        encode(tiny_lm.tokenizer, "i like people", response, where="data.jsonl:7")


def test_encode_refuses_sequences_longer_than_the_context(tiny_lm):
    with pytest.raises(ScoringError, match="exceeds the model's context of 64 tokens"):
        encode(tiny_lm.tokenizer, "i like people " * 30, "yes", max_length=64, where="row 3")


def test_extracted_states_reproduce_the_model(tiny_lm):
    encs = [encode(tiny_lm.tokenizer, p.prompt, r) for p in PROBE_EVALS[:3] for r in (p.chosen, p.rejected)]
    states = extract_states(tiny_lm.model, encs, pad_id_of(tiny_lm.tokenizer))
    for e, s in zip(encs, states, strict=True):
        ids = torch.tensor([e.input_ids])
        with torch.no_grad():
            out = tiny_lm.model(ids, output_hidden_states=True)
        k = e.prompt_len
        np.testing.assert_allclose(s.states.logits, out.logits[0, k - 1 : -1].numpy(), atol=1e-12)
        np.testing.assert_allclose(s.last_hidden, out.hidden_states[-1][0, -1].numpy(), atol=1e-12)
        lp = torch.log_softmax(out.logits[0, k - 1 : -1], -1)[torch.arange(e.response_len), ids[0, k:]].sum()
        assert np.isclose(s.logprob, lp.item(), rtol=1e-12)


def test_our_attention_is_causal_and_matches_transformers_eager(tiny_lm):
    """Regression: a custom attention needs its causal-mask builder registered, or it sees the future."""
    ids = torch.tensor([[2, 5, 6, 7, 3, 8, 9]])
    with torch.no_grad():
        ours = tiny_lm.model(ids).logits
        prefix = tiny_lm.model(ids[:, :4]).logits
        tiny_lm.model.set_attn_implementation("eager")
        ref = tiny_lm.model(ids).logits
    assert torch.allclose(prefix[0, -1], ours[0, 3], atol=1e-12)  # the future does not leak back
    assert torch.allclose(ours, ref, atol=1e-6)  # transformers' eager takes its softmax in float32


def test_prompt_cached_scoring_equals_whole_sequence_passes(tiny_lm):
    encs = [encode(tiny_lm.tokenizer, p.prompt, r) for p in PROBE_EVALS for r in (p.chosen, p.rejected)]
    pad = pad_id_of(tiny_lm.tokenizer)
    with torch.no_grad():
        sc = score(tiny_lm.model, encs, pad, keep_states=True, mode="cached")
        whole = score(tiny_lm.model, encs, pad, keep_states=True, mode="whole")
        single = score(tiny_lm.model, encs, pad, keep_states=True, mode="single")  # (one padded pass)
        logits, hidden = forward(tiny_lm.model, encs, pad)
    for other in (whole, single):
        assert torch.allclose(sc.logprob, other.logprob, atol=1e-12)
        assert torch.allclose(sc.mean_hidden, other.mean_hidden, atol=1e-12)
    for i, e in enumerate(encs):
        k, P = e.response_len, e.prompt_len
        lp = torch.log_softmax(logits[i, P - 1 : P - 1 + k], -1)[
            torch.arange(k), torch.tensor(e.response_ids)
        ].sum()
        assert torch.allclose(sc.logprob[i], lp, atol=1e-12)
        assert torch.allclose(sc.pred_hidden[i], hidden[i, P - 1 : P - 1 + k], atol=1e-12)
        assert torch.allclose(sc.last_hidden[i], hidden[i, P + k - 1], atol=1e-12)


def _pairs_of_uneven_prompts(tok):
    """Preference pairs (two responses per prompt) whose prompts differ in length."""
    prompts = ("i like the statement", "kindness matters", "i like people")  # 6, 4 and 5 tokens
    resp = ("a truthful reply is yes", "considering the statement , i say no")
    return [encode(tok, q, r) for q in prompts for r in resp]


def _loss_and_grads(model, sc):
    """A loss reading every output of score(), and its gradient on every weight."""
    model.zero_grad()
    loss = (
        (sc.logprob * torch.arange(1.0, len(sc.logprob) + 1, dtype=sc.logprob.dtype)).sum()
        + sc.last_hidden.sin().sum()
        + sc.mean_hidden.cos().sum()
        + sc.answer_logprob.sum()
    )
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_pairs_share_their_prompt_with_the_same_numbers_and_gradients(tiny_lm):
    """The cached mode packs prompts of different lengths into one right-padded pass and gathers its KV
    cache to one row per response: the same rewards, states, answer terms and gradients as whole
    sequences (float64), and "auto" takes it for pairs whose prompts outweigh their responses."""
    from lm_probes.lm.scoring import prompt_batches, shared_prompt_gain

    encs, pad = _pairs_of_uneven_prompts(tiny_lm.tokenizer), pad_id_of(tiny_lm.tokenizer)
    assert prompt_batches(encs, 16) == [[2, 3, 4, 5, 0, 1]]  # one pass, by prompt length
    got = {}
    for mode in ("cached", "whole"):
        sc = score(tiny_lm.model, encs, pad, keep_states=True, mode=mode, answer_ids=(3, 4))
        got[mode] = (sc, *_loss_and_grads(tiny_lm.model, sc))
    (c, c_loss, c_grad), (w, w_loss, w_grad) = got["cached"], got["whole"]
    for name in ("logprob", "last_hidden", "mean_hidden", "answer_logprob"):
        assert torch.allclose(getattr(c, name), getattr(w, name), rtol=0, atol=1e-12), name
    for a, b in zip(c.token_logprob + c.pred_logits, w.token_logprob + w.pred_logits, strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)
    assert torch.allclose(c_loss, w_loss, rtol=0, atol=1e-12) and c_grad.keys() == w_grad.keys()
    for n in c_grad:
        assert torch.allclose(c_grad[n], w_grad[n], rtol=0, atol=1e-10), n
    pads = sum(
        e.prompt_len + 2 * max(e.response_len, f.response_len)
        for e, f in zip(encs[::2], encs[1::2], strict=True)
    )
    assert shared_prompt_gain(encs) == sum(len(e.input_ids) for e in encs) / pads > 1.1
    long_short = [encode(tiny_lm.tokenizer, "you", r) for r in ("yes", "i like people " * 12)]
    assert shared_prompt_gain(long_short) < 1  # the short answer padded to the long one


def test_a_cached_pass_looks_its_tokens_up_once(tiny_lm):
    """The prompt pass and the response pass share one embedding lookup: each lookup's backward writes
    a dense (V, D) gradient (1 GiB at Llama-3.2-1B's shapes), and on a first micro-batch (no .grad yet,
    lm_probes.lm.into_grad) two held two at once. Whole sequences: one lookup per pass too."""
    encs, pad = _pairs_of_uneven_prompts(tiny_lm.tokenizer), pad_id_of(tiny_lm.tokenizer)
    emb = tiny_lm.model.get_input_embeddings()
    head_is_linear(tiny_lm.model)  # (its one-time check runs the model: not counted)
    for mode in ("cached", "whole"):
        calls = []
        handle = emb.register_forward_hook(lambda m, i, o, calls=calls: calls.append(i[0].numel()))
        try:
            sc = score(tiny_lm.model, encs, pad, mode=mode, max_group=16)
            sc.logprob.sum().backward()
        finally:
            handle.remove()
        tiny_lm.model.zero_grad()
        assert len(calls) == 1, (mode, calls)
        n_prompts = 3 * max(e.prompt_len for e in encs) + 6 * max(e.response_len for e in encs)
        assert calls[0] == (n_prompts if mode == "cached" else 6 * max(len(e.input_ids) for e in encs))


def test_prompt_batches_close_on_size_fill_and_sliding_windows(tiny_lm):
    from lm_probes.lm.scoring import prompt_batches

    encs = _pairs_of_uneven_prompts(tiny_lm.tokenizer)
    assert prompt_batches(encs, 4) == [[2, 3, 4, 5], [0, 1]]  # at most 4 responses a pass
    assert prompt_batches(encs, 1) == [[2], [3], [4], [5], [0], [1]]  # a group split too
    assert prompt_batches(encs, 16, gap_free=True) == [[2, 3], [4, 5], [0, 1]]  # one prompt length a pass
    long_ = [encode(tiny_lm.tokenizer, "i like people " * 8, "yes"), encode(tiny_lm.tokenizer, "you", "no")]
    assert prompt_batches(long_, 16) == [[1], [0]]  # padding the short prompt to the long wastes > 20 %


def test_uneven_batches_are_split_by_length_with_the_same_numbers(tiny_lm):
    """score() splits a batch whose padding would waste over 20 % (lm_probes.lm.scoring.length_groups):
    same rewards, states and per-token terms as one sequence at a time, in the original order."""
    from lm_probes.lm.scoring import length_groups

    short, long_ = (
        "yes",
        "a truthful reply is yes considering the statement , i say no sure never kindness matters",
    )
    encs = [
        encode(tiny_lm.tokenizer, "i like people", r) for r in (long_, short, long_ + " yes", short + " no")
    ]
    groups = length_groups(encs)
    assert len(groups) == 2 and sorted(i for g in groups for i in g) == [0, 1, 2, 3]
    assert length_groups(encs[:1]) == [[0]] and length_groups([encs[0], encs[2]]) == [[0, 1]]
    pad = pad_id_of(tiny_lm.tokenizer)
    with torch.no_grad():
        split = score(tiny_lm.model, encs, pad, keep_states=True, mode="whole", answer_ids=(3, 4))
        alone = [
            score(tiny_lm.model, [e], pad, keep_states=True, mode="whole", answer_ids=(3, 4)) for e in encs
        ]
    for i, one in enumerate(alone):
        assert torch.allclose(split.logprob[i], one.logprob[0], atol=1e-12)
        assert torch.allclose(split.last_hidden[i], one.last_hidden[0], atol=1e-12)
        assert torch.allclose(split.token_logprob[i], one.token_logprob[0], atol=1e-12)
        assert torch.allclose(split.pred_logits[i], one.pred_logits[0], atol=1e-12)
        assert torch.allclose(split.answer_logprob[i], one.answer_logprob[0], atol=1e-12)
        assert int(split.n_tokens[i]) == encs[i].response_len


def test_head_check_catches_logit_post_processing(tiny_lm):
    model = tiny_lm.model
    enc = [encode(tiny_lm.tokenizer, "i like people", "a truthful reply is yes")]
    original = model.forward

    def capped(*a, **kw):
        out = original(*a, **kw)
        out.logits = 3.0 * torch.tanh(out.logits / 3.0)  # Gemma-style soft-capping
        return out

    model.forward = capped
    with pytest.raises(HeadMismatchError, match="fixed-state dynamics"):
        extract_states(model, enc, pad_id_of(tiny_lm.tokenizer))


def test_sdpa_attention_scores_like_the_eager_one():
    """--attention sdpa (faster on long sequences) against the default eager path, float64 tiny model."""
    from lm_probes.lm.encoding import pad_id_of
    from lm_probes.lm.scoring import score

    lm = make_tiny_lm(max_positions=128)
    encs = [
        e
        for p in encode_pairs(lm.tokenizer, [Pair("is the", "yes sure", "no never i like")]).encodings
        for e in p
    ]
    eager = score(lm.model, encs, pad_id_of(lm.tokenizer), mode="whole")
    lm.model.set_attn_implementation("sdpa")
    fused = score(lm.model, encs, pad_id_of(lm.tokenizer), mode="whole")
    torch.testing.assert_close(fused.logprob, eager.logprob, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fused.last_hidden, eager.last_hidden, rtol=1e-10, atol=1e-10)


def test_a_text_too_long_to_fit_is_refused_before_tokenising(tiny_lm, monkeypatch):
    """A 10 MB response cannot fit 64 tokens: refused without calling the tokenizer; a text near the
    bound is still tokenised and measured."""
    tok = tiny_lm.tokenizer
    calls = []
    real = type(tok).__call__
    monkeypatch.setattr(type(tok), "__call__", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    with pytest.raises(ScoringError, match="checked before tokenising"):
        encode(tok, "i like people", "yes " * 2_500_000, max_length=64, where="row 1")
    with pytest.raises(ScoringError, match="checked before tokenising"):
        encode(tok, "i like people", "yes " * 2_500_000, max_part_length=64, where="row 1")
    assert not calls
    with pytest.raises(ScoringError, match="exceeds the model's context of 64 tokens"):
        encode(tok, "i like people", "yes " * 65, max_length=64)  # 260 characters: under the bound
    assert calls
