"""Mitigations of IM-RM brittleness (lm_probes.rm.mitigations, issue 12) on the tiny random Llama: each
mechanism checked against an independent computation, and ``rmgap mitigations`` end to end."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
import torch

from lm_probes.data import persona
from lm_probes.data.pairs import Pair, encode_pairs
from lm_probes.lm.scoring import score
from lm_probes.rm.config import TrainConfig
from lm_probes.rm.mitigations import (
    augmented_pairs,
    consistency_penalty,
    token_dropout_reward,
    token_keep_masks,
)
from lm_probes.rm.reward_model import RewardModel
from lm_probes.rm.rewards import bradley_terry
from lm_probes.rm.trainer import train_reward_model
from tests.conftest import REWRITE_TRAIN, make_tiny_lm

EVAL = {"orig": REWRITE_TRAIN[:2]}


SMALL = dict(epochs=2, lr=1e-2, batch_size=4, micro_batch=2, progress=False)


def encodings(lm, pairs):
    return [e for pr in encode_pairs(lm.tokenizer, pairs).encodings for e in pr]


def nudge(model, scale=0.05, seed=1):
    """Move every parameter a little (seeded), so that rewards are no longer all 0."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p += scale * torch.randn(p.shape, generator=gen, dtype=p.dtype)


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


def test_token_dropout_is_unbiased_over_every_mask():
    terms, p = torch.tensor([0.3, -1.2, 2.0, 0.5], dtype=torch.float64), 0.3
    expected = torch.zeros((), dtype=torch.float64)
    for bits in itertools.product((False, True), repeat=len(terms)):
        prob = np.prod([(1 - p) if b else p for b in bits])
        expected += prob * token_dropout_reward(terms, torch.tensor(bits), p)
    assert float(expected) == pytest.approx(float(terms.sum()), rel=1e-12)
    assert float(token_dropout_reward(terms, torch.ones(4, dtype=torch.bool), 0.0)) == float(terms.sum())


def test_training_rewards_with_token_dropout_use_the_seeded_masks():
    lm = make_tiny_lm()
    rm = RewardModel(lm, TrainConfig(objective="im_rm", token_dropout=0.5, beta=0.1))
    encs = encodings(lm, REWRITE_TRAIN[:2])
    rm.fill_reference(encs)
    ref_tok = [score(lm.model, [e], rm.pad).token_logprob[0] for e in encs]
    nudge(lm.model)
    with torch.no_grad():
        plain, sc, _ = rm.rewards(encs, with_scored=True)
        dropped = rm.rewards(encs, dropout=torch.Generator().manual_seed(3))
    keep = token_keep_masks([e.response_len for e in encs], 0.5, torch.Generator().manual_seed(3))
    by_hand = [
        0.1 * ((lp - ref) * k).sum() / 0.5 for lp, ref, k in zip(sc.token_logprob, ref_tok, keep, strict=True)
    ]
    assert torch.allclose(dropped, torch.stack(by_hand), atol=1e-12)
    assert not torch.allclose(dropped, plain)  # some token was dropped
    assert torch.allclose(
        plain, 0.1 * torch.stack([(lp - r).sum() for lp, r in zip(sc.token_logprob, ref_tok, strict=True)])
    )


def test_token_dropouts_expected_first_step_is_the_plain_im_rms(monkeypatch):
    """Theory §6, computed rather than assumed: at θ₀ the training loss's gradient under token dropout,
    averaged over every keep mask of a pair (each weighted by its Bernoulli probability), is the plain
    IM-RM's gradient. (rmgap mitigations' one-step prediction for token dropout is the undropped
    gradient: this identity is what makes it the expected step.)"""
    import lm_probes.rm.reward_model as reward_model

    lm = make_tiny_lm()
    pair = Pair("i like people", "sure , absolutely", "never , not really", "train", "t0")
    (enc,) = encode_pairs(lm.tokenizer, [pair]).encodings
    p = 0.4
    rm = RewardModel(lm, TrainConfig(objective="im_rm", token_dropout=p, beta=0.1))
    rm.fill_reference(list(enc))

    def grad(dropout=None) -> torch.Tensor:
        lm.model.zero_grad()
        rm.batch_loss([enc], dropout=dropout).backward()
        return torch.cat([q.grad.flatten() for q in lm.model.parameters() if q.grad is not None])

    plain = grad()
    lengths = [e.response_len for e in enc]
    expected = torch.zeros_like(plain)
    for bits in itertools.product((False, True), repeat=sum(lengths)):
        masks = [torch.tensor(bits[: lengths[0]]), torch.tensor(bits[lengths[0] :])]
        monkeypatch.setattr(reward_model, "token_keep_masks", lambda *a, masks=masks: masks)
        prob = np.prod([(1 - p) if b else p for b in bits])
        expected += prob * grad(dropout=torch.Generator())
    assert sum(lengths) >= 6 and plain.abs().max() > 1e-6
    assert torch.allclose(expected, plain, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("what", ["unembedding", "representations"])
def test_frozen_parameters_do_not_move(what):
    lm = make_tiny_lm(tie=True)
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    w0 = lm.model.get_output_embeddings().weight.detach().clone()
    train_reward_model(lm, REWRITE_TRAIN, EVAL, TrainConfig(objective="im_rm", freeze=what, **SMALL))
    head, emb = lm.model.get_output_embeddings().weight, lm.model.get_input_embeddings().weight
    assert head is not emb  # untied first
    body = {n: p for n, p in lm.model.named_parameters() if n != "lm_head.weight"}
    moved = {n for n, p in body.items() if not torch.equal(p, before[n])}
    if what == "unembedding":
        assert torch.equal(head, w0) and "model.embed_tokens.weight" in moved and len(moved) == len(body)
    else:
        assert not torch.equal(head, w0) and not moved


def test_unembedding_penalty_pulls_toward_the_initial_head():
    lm = make_tiny_lm(tie=True)
    rm = RewardModel(lm, TrainConfig(objective="im_rm", unembedding_l2=2.0))
    head = lm.model.get_output_embeddings().weight
    assert head is lm.model.get_input_embeddings().weight and float(rm.step_penalty().detach()) == 0.0
    delta = 0.01 * torch.randn(head.shape, generator=torch.Generator().manual_seed(0), dtype=head.dtype)
    with torch.no_grad():
        head += delta
    (grad,) = torch.autograd.grad(rm.step_penalty(), [head])
    assert torch.allclose(grad, 4.0 * delta) and float(rm.step_penalty().detach()) == pytest.approx(
        2.0 * float((delta**2).sum())
    )

    def distance(l2):
        lm = make_tiny_lm(tie=True)
        w0 = lm.model.get_output_embeddings().weight.detach().clone()
        cfg = TrainConfig(objective="im_rm", unembedding_l2=l2, **SMALL)
        train_reward_model(lm, REWRITE_TRAIN, EVAL, cfg)
        return float((lm.model.get_output_embeddings().weight - w0).detach().norm())

    assert distance(1e3) < 0.5 * distance(0.0)


def test_consistency_term_of_the_batch_loss():
    lm = make_tiny_lm()
    rm = RewardModel(lm, TrainConfig(objective="im_rm", consistency=0.7, beta=0.1))
    enc = encode_pairs(lm.tokenizer, REWRITE_TRAIN[:2]).encodings
    rw = encode_pairs(lm.tokenizer, [Pair(p.prompt, *p.rewrite) for p in REWRITE_TRAIN[:2]]).encodings
    rm.fill_reference([e for pr in [*enc, *rw] for e in pr])
    nudge(lm.model)
    with torch.no_grad():
        loss = rm.batch_loss(enc, [rw[0], None])  # the second pair without a rewrite
        r = rm.rewards([*enc[0], *enc[1]])
        r_rw = rm.rewards([*rw[0]])
    bt = bradley_terry(r[0::2], r[1::2]).sum()
    term = 0.5 * ((r[0] - r_rw[0]) ** 2 + (r[1] - r_rw[1]) ** 2)
    assert float(loss) == pytest.approx(float(bt + 0.7 * term), rel=1e-10)
    assert float(term) > 0
    assert torch.allclose(consistency_penalty(r[:2], r[:2]), torch.zeros(1, dtype=r.dtype))


@pytest.mark.parametrize("objective", ["im_rm_mean", "im_rm_mean_no_ref"])
def test_length_normalised_reward_is_the_mean_log_ratio(objective):
    lm = make_tiny_lm()
    rm = RewardModel(lm, TrainConfig(objective=objective, beta=0.1))
    encs = encodings(lm, REWRITE_TRAIN[:2])
    rm.fill_reference(encs)
    ref_tok = [score(lm.model, [e], rm.pad).token_logprob[0] for e in encs]
    nudge(lm.model)
    with torch.no_grad():
        r = rm.rewards(encs)
    tok = [score(lm.model, [e], rm.pad).token_logprob[0] for e in encs]
    ref = ref_tok if objective == "im_rm_mean" else [torch.zeros_like(t) for t in tok]
    assert torch.allclose(r, torch.stack([0.1 * (t - q).mean() for t, q in zip(tok, ref, strict=True)]))


def test_hybrid_is_the_sum_of_the_explicit_and_the_implicit_reward():
    lm = make_tiny_lm()
    rms = {
        o: RewardModel(lm, TrainConfig(objective=o, beta=0.1, seed=4)) for o in ("hybrid", "ex_rm", "im_rm")
    }
    encs = encodings(lm, REWRITE_TRAIN[:2])
    for rm in rms.values():
        rm.fill_reference(encs)
    nudge(lm.model)
    with torch.no_grad():
        r = {o: rm.rewards(encs) for o, rm in rms.items()}
    assert torch.allclose(r["hybrid"], r["ex_rm"] + r["im_rm"])


def test_augmentation_never_trains_on_the_evaluation_paraphrases():
    data = persona.persona_data()
    train = augmented_pairs(data["train"])
    assert len(train) == 2 * len(data["train"])
    # the added pairs share no word with the evaluation paraphrases (the original templates do share
    # "my" and "I": they are the authors')
    added = set().union(*(words(p.chosen) | words(p.rejected) for p in train[len(data["train"]) :]))
    evaluation = words(
        " ".join(
            [persona.PARA_YES_PREFIX, persona.PARA_NO_PREFIX, *persona.PARA_YES_WORDS, *persona.PARA_NO_WORDS]
        )
    )
    assert added.isdisjoint(evaluation)
    responses = {r for p in train for r in (p.chosen, p.rejected)}
    for name in ("paraphrased_train", "paraphrased_test"):
        assert responses.isdisjoint({r for p in data["eval"][name] for r in (p.chosen, p.rejected)})
    assert {p.chosen.rsplit(" ", 1)[0] for p in train[len(data["train"]) :]} == {persona.AUG_YES_PREFIX}


def test_options_that_cannot_apply_are_refused():
    with pytest.raises(ValueError, match="token_dropout"):
        TrainConfig(objective="ex_rm", token_dropout=0.2).check()
    with pytest.raises(ValueError, match="freeze"):
        TrainConfig(freeze="everything").check()
    with pytest.raises(ValueError, match="rewrites"):
        train_reward_model(
            make_tiny_lm(),
            [Pair(REWRITE_TRAIN[0].prompt, REWRITE_TRAIN[0].chosen, REWRITE_TRAIN[0].rejected)],
            EVAL,
            TrainConfig(consistency=1.0, **SMALL),
        )
