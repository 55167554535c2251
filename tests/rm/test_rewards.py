"""The reward registry (lm_probes.rm.rewards): one definition per reward type, shared by training,
evaluation and the probe; checked against theory.rewards through an independent forward pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lm_probes.data.pairs import Pair, encode_pairs
from lm_probes.lm.encoding import pad_id_of
from lm_probes.probe.one_step import ProbeConfig, run_probe
from lm_probes.rm.config import TrainConfig
from lm_probes.rm.reward_model import RewardModel
from lm_probes.rm.rewards import REWARDS, RewardParams, RewardType, bradley_terry, initial_head, register
from lm_probes.rm.trainer import train_reward_model
from tests.conftest import GRM_WORDS, make_tiny_lm
from theory import bt_loss, ex_reward, im_reward

PAIRS = [
    Pair("i like people", "a truthful reply is yes", "considering the statement , i say no", "t", "r0"),
    Pair("kindness matters", "my response would be certainly", "i lean toward nope", "t", "r1"),
    Pair("kindness matters", "a truthful reply is sure", "i say never", "t", "r2"),
]


EVALS = [
    Pair("you would say", "a truthful reply is yes", "considering the statement , i say no", "same", "e0"),
    Pair("you would say", "my response would be absolutely", "i lean toward not really", "para", "e0"),
    Pair("people matters", "a truthful reply is sure", "considering the statement , i say never", "ov", "e1"),
]


def independent(model, encs):
    """ln π (N,), last state (N, D), mean response state (N, D) from one plain forward pass each."""
    lps, last, mean = [], [], []
    for e in encs:
        ids = torch.tensor([e.input_ids])
        with torch.no_grad():
            out = model(ids, output_hidden_states=True)
        P, K = e.prompt_len, e.response_len
        logp = torch.log_softmax(out.logits[0, P - 1 : -1], -1)
        lps.append(logp[torch.arange(K), ids[0, P:]].sum().item())
        h = out.hidden_states[-1][0]
        last.append(h[-1].numpy())
        mean.append(h[P:].mean(0).numpy())
    return np.array(lps), np.stack(last), np.stack(mean)


@pytest.fixture
def toy_type():
    """A new reward type in one entry: the implicit reward squashed by tanh."""
    rt = register(
        RewardType(
            "toy_im_tanh",
            "toy: tanh(β (ln π_θ − ln π_ref))",
            lambda sc, p: torch.tanh(p.beta * (sc.logprob - p.ref.to(sc.logprob.dtype))),
            uses_reference=True,
        )
    )
    yield rt
    REWARDS.pop(rt.name)


def test_registry_rewards_equal_theory_rewards_on_a_tiny_model():
    lm = make_tiny_lm()
    encs = [e for pr in encode_pairs(lm.tokenizer, PAIRS).encodings for e in pr]
    ref_lp, _, _ = independent(lm.model, encs)
    with torch.no_grad():  # move away from π_ref so the implicit rewards are not all 0
        for p in lm.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    lp, last, mean = independent(lm.model, encs)
    u, beta = initial_head(32, seed=3, dtype=torch.float64), 0.1
    params = RewardParams(beta, u, torch.tensor(ref_lp))
    want = {
        "ex_rm": ex_reward(u.numpy(), last),
        "ex_rm_mean": ex_reward(u.numpy(), mean),
        "im_rm": im_reward(lp, ref_lp, beta),
        "im_rm_no_ref": im_reward(lp, np.zeros_like(lp), beta),
    }
    assert set(want) <= set(REWARDS)
    pad = pad_id_of(lm.tokenizer)
    for name, w in want.items():
        with torch.no_grad():
            got = REWARDS[name].score(lm.model, encs, pad, params).numpy()
        np.testing.assert_allclose(got, w, rtol=1e-9, atol=1e-12, err_msg=name)
        assert np.ptp(w) > 1e-3, name  # the comparison is not between zeros


def test_registry_loss_is_theorys_bradley_terry():
    rc, rr = np.array([0.3, -1.0, 2.0, 0.0]), np.array([0.1, 0.5, -3.0, 0.0])
    got = bradley_terry(torch.tensor(rc), torch.tensor(rr)).numpy()
    np.testing.assert_allclose(got, bt_loss(rc, rr, reduction="none"), rtol=1e-12)
    assert all(rt.loss is bradley_terry for rt in REWARDS.values() if rt.loss_input is None)


def test_initial_head_is_the_same_in_every_dtype():
    u64 = initial_head(64, seed=7, dtype=torch.float64)
    assert torch.equal(initial_head(64, seed=7, dtype=torch.float32), u64.float())
    assert not torch.equal(initial_head(64, seed=8, dtype=torch.float64), u64)
    assert abs(float(u64.pow(2).sum()) - 1.0) < 0.5  # N(0, 1/D) entries: ‖u0‖ ≈ 1


def _by_hand(lm, enc, name: str, u: torch.Tensor, beta: float) -> float:
    """One reward from the transformers model's own forward, with none of lm_probes' scoring: the
    final hidden states (after the last norm) and the log-softmax of the logits."""
    ids = torch.tensor([enc.input_ids])
    with torch.no_grad():
        out = lm.model(input_ids=ids, output_hidden_states=True)
    h, P = out.hidden_states[-1][0], enc.prompt_len
    if name == "ex_rm":
        return float(u @ h[-1])
    if name == "ex_rm_mean":
        return float(u @ h[P:].mean(0))
    logp = out.logits[0, P - 1 : -1].log_softmax(-1).gather(1, ids[0, P:, None]).sum()
    return float(beta * logp) if name == "im_rm_no_ref" else 0.0  # im_rm at θ₀: π_θ = π_ref


def test_the_probe_and_training_give_the_reward_a_plain_forward_gives():
    """The probe's rewards at θ₀ and the training RewardModel's, each against rewards computed from the
    model's own forward by hand (_by_hand: no lm_probes scoring code), for the same weights and head."""
    lm = make_tiny_lm()
    names = ("im_rm", "ex_rm", "ex_rm_mean", "im_rm_no_ref")
    res = run_probe(lm, PAIRS[:1], EVALS, ProbeConfig(rewards=names, modes=(), head_seed=5, progress=False))
    encs = [e for pr in encode_pairs(lm.tokenizer, EVALS).encodings for e in pr]
    u = initial_head(lm.info["hidden_size"], 5, lm.dtype)
    for name in names:
        want = np.array([_by_hand(lm, e, name, u, ProbeConfig.beta) for e in encs])
        rm = RewardModel(lm, TrainConfig(objective=name, seed=5, beta=ProbeConfig.beta))
        rm.fill_reference(encs)
        with torch.no_grad():
            trained_side = rm.rewards(encs).numpy()
        probe_side = np.array([r[f"{name}_reward"] for r in res["records"]])
        np.testing.assert_allclose(probe_side, want, rtol=1e-9, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(trained_side, want, rtol=1e-9, atol=1e-12, err_msg=name)
    assert np.ptp([r["ex_rm_reward"] for r in res["records"]]) > 1e-3
    assert np.ptp([r["im_rm_no_ref_reward"] for r in res["records"]]) > 1e-3


def test_a_new_reward_type_needs_one_entry(toy_type, tmp_path):
    from rmgap.commands.train import main as train_main

    # training and evaluation
    cfg = TrainConfig(objective="toy_im_tanh", epochs=3, lr=1e-2, batch_size=2, micro_batch=1, progress=False)
    s = train_reward_model(make_tiny_lm(), PAIRS, {"t": PAIRS}, cfg).summary
    assert s["history"][0]["t"]["rmgap/tie_rate"] == 1.0  # untrained: every reward exactly 0
    assert s["final"]["t"]["rmgap/accuracy_half_ties"] == 1.0 and s["reward_type"] == toy_type.summary
    # the probe: exact first order and the observed all-parameter step (no fixed-state prediction)
    res = run_probe(
        make_tiny_lm(), PAIRS[:1], EVALS, ProbeConfig(rewards=("toy_im_tanh",), lr=1e-5, progress=False)
    )
    full = res["summary"]["full"]["toy_im_tanh"]
    assert full["pearson_first_order"] > 0.9999 and "fixed_state" not in full
    # the command line
    data = tmp_path / "pairs.jsonl"
    data.write_text(
        "".join(
            f'{{"prompt": "{p.prompt}", "chosen": "{p.chosen}", "rejected": "{p.rejected}"}}\n' for p in PAIRS
        )
    )
    argv = ["--train", str(data), "--objective", "toy_im_tanh", "--epochs", "1", "--out", str(tmp_path / "o")]
    assert train_main([*argv, "--quiet"], lm=make_tiny_lm())["config"]["objective"] == "toy_im_tanh"


def test_registry_refuses_inconsistent_entries():
    with pytest.raises(ValueError, match="already registered"):
        register(REWARDS["im_rm"])
    with pytest.raises(ValueError, match="needs uses_head"):
        RewardType(
            "bad", "", lambda sc, p: sc.logprob, fixed_state=lambda *a, **k: 0, fixed_state_moves="head"
        )


def test_ex_grm_reward_and_loss_by_hand():
    """r = P("Yes") at the answer position of the authors' verification prompt; the loss is
    −ln P(Yes | chosen) − ln P(No | rejected): both against a plain forward pass of the rendered text."""
    from lm_probes.lm.encoding import render_prompt

    lm = make_tiny_lm(extra_words=GRM_WORDS)
    tok = lm.tokenizer
    yes, no = tok.convert_tokens_to_ids("Yes"), tok.convert_tokens_to_ids("No")

    def by_hand(prompt, response):
        text = render_prompt(
            tok, f"Question: {prompt}\nAnswer: {response}\nVerification: Is the answer correct (Yes/No)?"
        )
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            lp = torch.log_softmax(lm.model(ids).logits[0, -1], -1)
        return float(lp[yes]), float(lp[no])

    rm = RewardModel(lm, TrainConfig(objective="ex_grm"))
    encs = [e for pr in encode_pairs(tok, PAIRS, verbalize=REWARDS["ex_grm"].verbalize).encodings for e in pr]
    with torch.no_grad():
        r = rm.rewards(encs).numpy()
        losses = rm.pair_losses(encs).numpy()
    hand = [by_hand(p.prompt, resp) for p in PAIRS for resp in (p.chosen, p.rejected)]
    np.testing.assert_allclose(r, [np.exp(y) for y, _ in hand], rtol=1e-10)
    want = [-hand[2 * i][0] - hand[2 * i + 1][1] for i in range(len(PAIRS))]
    np.testing.assert_allclose(losses, want, rtol=1e-10)
    assert np.ptp(r) > 1e-6 and 0 < r.min() and r.max() < 1
    # evaluation reports the same loss (it reads ln P(No) too), and training lowers it
    cfg = TrainConfig(objective="ex_grm", epochs=3, lr=1e-2, batch_size=2, micro_batch=1, progress=False)
    s = train_reward_model(make_tiny_lm(extra_words=GRM_WORDS), PAIRS, {"t": PAIRS}, cfg).summary
    assert s["history"][0]["t"]["loss"] == pytest.approx(np.mean(want), rel=1e-9)
    assert s["final"]["t"]["loss"] < s["history"][0]["t"]["loss"]
    assert s["final"]["t"]["rmgap/accuracy_half_ties"] == 1.0
    # a tokenizer without a one-token "Yes" is refused with a clear message
    with pytest.raises(ValueError, match="answer 'Yes' is the unknown token"):
        RewardModel(make_tiny_lm(), TrainConfig(objective="ex_grm"))


def test_the_probe_supports_the_ex_grm():
    """The probe scores the EX-GRM on its own verification prompts: its θ0 rewards equal training's,
    and the exact first-order change predicts one real all-parameter step."""
    lm = make_tiny_lm(extra_words=GRM_WORDS)
    cfg = ProbeConfig(rewards=("ex_grm", "im_rm"), modes=("full",), lr=1e-4, progress=False)
    res = run_probe(lm, PAIRS[:1], EVALS, cfg)
    encs = [
        e
        for pr in encode_pairs(lm.tokenizer, EVALS, verbalize=REWARDS["ex_grm"].verbalize).encodings
        for e in pr
    ]
    with torch.no_grad():
        trained_side = RewardModel(lm, TrainConfig(objective="ex_grm")).rewards(encs).numpy()
    np.testing.assert_allclose([r["ex_grm_reward"] for r in res["records"]], trained_side, rtol=1e-9)
    full = res["summary"]["full"]["ex_grm"]
    assert full["pearson_first_order"] > 0.999 and "fixed_state" not in full
