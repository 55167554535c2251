"""lm_probes on a tiny random Llama (fast tier) and on SmolLM2-135M-Instruct (slow tier)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lm_probes.data import DataError, Pair, read_jsonl
from lm_probes.loading import untie_output_head
from lm_probes.persona import persona_probe_set
from lm_probes.probe import ProbeConfig, run_probe
from lm_probes.probe_summary import compare
from lm_probes.scoring import HeadMismatchError, ScoringError, encode, pad_id_of, score
from lm_probes.states import extract_states, forward
from tests.conftest import make_tiny_lm

TRAIN = [
    Pair("i like people", "a truthful reply is yes", "considering the statement , i say no", "train", "t0")
]
EVALS = [
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
    encs = [encode(tiny_lm.tokenizer, p.prompt, r) for p in EVALS[:3] for r in (p.chosen, p.rejected)]
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
    encs = [encode(tiny_lm.tokenizer, p.prompt, r) for p in EVALS for r in (p.chosen, p.rejected)]
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


def test_uneven_batches_are_split_by_length_with_the_same_numbers(tiny_lm):
    """score() splits a batch whose padding would waste over 20 % (lm_probes.scoring.length_groups):
    same rewards, states and per-token terms as one sequence at a time, in the original order."""
    from lm_probes.scoring import length_groups

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


def test_untie_output_head_copies_the_embedding():
    lm = make_tiny_lm(tie=True)
    assert untie_output_head(lm.model)
    head, emb = lm.model.get_output_embeddings().weight, lm.model.get_input_embeddings().weight
    assert head.data_ptr() != emb.data_ptr() and torch.equal(head, emb)
    assert not untie_output_head(lm.model)


@pytest.fixture(scope="module")
def tiny_probe():
    lm = make_tiny_lm()
    return run_probe(lm, TRAIN, EVALS, ProbeConfig(lr=1e-5, progress=False))


def test_probe_head_only_predictions_match_a_real_step(tiny_probe):
    s = tiny_probe["summary"]
    im, ex = s["head_only"]["im_rm"], s["head_only"]["ex_rm"]
    assert im["pearson"] > 0.9999 and im["median_rel_error"] < 1e-3
    assert ex["pearson"] > 0.999999 and ex["median_rel_error"] < 1e-9
    assert s["full"]["im_rm"]["pearson_first_order"] > 0.9999
    assert s["full"]["ex_rm"]["pearson_first_order"] > 0.9999
    assert s["full"]["im_rm"]["first_order"]["median_rel_error"] < 1e-3
    assert set(s["groups"]) == {"same", "paraphrase", "overlap"}
    assert {"fixed_state", "head_only", "first_order", "full"} <= set(s["groups"]["same"]["im_rm"])


def test_probe_first_order_error_shrinks_with_eta():
    lm = make_tiny_lm()
    errs = [
        run_probe(lm, TRAIN, EVALS, ProbeConfig(lr=lr, progress=False, modes=("full",)))["summary"]["full"][
            "im_rm"
        ]["first_order"]["median_rel_error"]
        for lr in (1e-3, 1e-4)
    ]
    assert 5 < errs[0] / errs[1] < 20, errs


def test_probe_restores_the_model(tiny_probe):
    lm = make_tiny_lm()
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    run_probe(lm, TRAIN, EVALS[:2], ProbeConfig(lr=1e-2, progress=False))
    for k, v in lm.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    out, inp = lm.model.get_output_embeddings().weight, lm.model.get_input_embeddings().weight
    assert out.data_ptr() == inp.data_ptr()  # still tied


def test_contributions_sum_to_the_fixed_state_prediction(tiny_probe):
    for c, r in zip(tiny_probe["contributions"], tiny_probe["records"], strict=True):
        total = sum(np.sum(t["plus"]) - np.sum(t["minus"]) for t in c["im_rm"])
        assert np.isclose(total, r["im_rm_fixed_state"], rtol=1e-10, atol=1e-300)
        assert c["group"] == r["group"] and c["response"] == r["response"]


def test_compare_metrics():
    c = compare([1.0, 2.0, -3.0, 4.0], [1.1, 2.0, -2.7, 4.4])
    assert c["sign_agreement"] == 1.0 and c["pearson"] > 0.99
    assert np.isclose(c["median_rel_error"], np.median([0.1 / 1.1, 0.0, 0.3 / 2.7, 0.4 / 4.4]))


def test_read_jsonl_names_file_line_and_field(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": "a"}\n')
    with pytest.raises(DataError, match=r"d.jsonl:2: missing field 'rejected'"):
        read_jsonl(f)
    f.write_text('{"prompt": "p", "chosen": "", "rejected": "b"}\n')
    with pytest.raises(DataError, match=r"d.jsonl:1: empty chosen response"):
        read_jsonl(f)
    f.write_text("{not json\n")
    with pytest.raises(DataError, match=r"d.jsonl:1: not valid JSON"):
        read_jsonl(f)


def test_persona_probe_set_groups():
    s = persona_probe_set(n_eval_statements=3, n_margin_statements=2, seed=1)
    assert len(s["train"]) == 1 and len(s["margin"]) == 2 and len(s["eval"]) == 15
    assert [p.group for p in s["eval"][:5]] == ["same", "overlap", "overlap", "paraphrase", "paraphrase"]
    train_words = set((s["train"][0].chosen + " " + s["train"][0].rejected).lower().replace(",", "").split())
    for p in s["eval"]:
        if p.group == "paraphrase":
            # no content word in common (theory/README.md §5); the pronoun "I" is the only shared word
            assert set((p.chosen + " " + p.rejected).lower().split()) & train_words <= {"i"}
    prompts = {p.prompt for p in s["eval"]}
    assert s["train"][0].prompt not in prompts


def test_probe_cli_writes_report(tmp_path):
    from lm_probes.cli import probe_main as main

    data = tmp_path / "pairs.jsonl"
    rows = [TRAIN[0], *EVALS]
    data.write_text(
        "".join(
            json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n" for p in rows
        )
    )
    out = tmp_path / "out"
    s = main(["--data", str(data), "--out", str(out), "--quiet", "--lr", "1e-4"], lm=make_tiny_lm())
    on_disk = json.loads((out / "summary.json").read_text())
    for k in ("pearson", "median_rel_error"):
        assert k in on_disk["head_only"]["im_rm"]
    assert {"pearson_first_order", "pearson_fixed_state"} <= set(on_disk["full"]["im_rm"])
    assert "pearson_first_order" in on_disk["full"]["ex_rm"]
    assert (out / "scatter.png").exists() and (out / "records.csv").read_text().count("\n") == 11
    assert s["n_eval_pairs"] == 5
    lines = (out / "contributions.jsonl").read_text().splitlines()
    assert len(lines) == 10
    c = json.loads(lines[0])
    assert len(c["im_rm"][0]["plus"]) == len(c["tokens"]) and len(c["im_rm"][0]["plus"][0]) == len(
        c["train_tokens"][0][0]
    )


def test_by_response_pair_recomputes_from_records(tiny_probe):
    """The per-response-pair breakdown equals the mean over its prompts, computed here from records."""
    s, recs = tiny_probe["summary"], tiny_probe["records"]
    (row,) = [r for r in s["by_response_pair"] if r["group"] == "same"]  # the only pair on two prompts
    assert row["n"] == 2 and len(s["by_response_pair"]) == 1
    pairs = [(a, b) for a, b in zip(recs[0::2], recs[1::2], strict=True) if a["group"] == "same"]
    for name in ("im_rm", "ex_rm"):
        d = [a[f"{name}_full"] - b[f"{name}_full"] for a, b in pairs]
        assert np.isclose(row[name]["full"]["mean"], np.mean(d), rtol=1e-12)
        assert row[name]["full"]["fraction_right"] == np.mean(np.array(d) > 0)
