"""The frozen-LM baselines (lm_probes.probe.frozen): the pair probe against planted and absent signal,
λ by cross-validation, and the features against a plain transformers forward."""

import numpy as np
import pytest
import torch

from lm_probes.data.pairs import Pair
from lm_probes.probe.frozen import (
    cross_validated_lambda,
    fit_pair_probe,
    frozen_baselines,
    pair_features,
)
from tests.conftest import make_tiny_lm


def _planted(n, d, signal, seed):
    rng = np.random.default_rng(seed)
    u = rng.normal(size=d)
    x = rng.normal(size=(n, d))
    return x + signal * np.outer(np.sign(x @ u), u) / np.linalg.norm(u), u


def test_pair_probe_finds_a_planted_direction_and_nothing_in_noise():
    x, u = _planted(400, 20, 3.0, 0)
    diffs = x * np.sign(x @ u)[:, None]  # h+ − h−: the preferred side along u
    w = fit_pair_probe(diffs[:200], 1e-3)
    assert np.mean(diffs[200:] @ w > 0) > 0.95
    assert np.corrcoef(w, u)[0, 1] > 0.9
    noise = np.random.default_rng(1).normal(size=(400, 20))
    w = fit_pair_probe(noise[:200], 1e-3)
    assert abs(np.mean(noise[200:] @ w > 0) - 0.5) < 0.1


def test_fit_is_the_regularised_minimum():
    diffs = np.random.default_rng(2).normal(size=(50, 5)) + 0.3
    lam = 0.1
    w = fit_pair_probe(diffs, lam)
    # the stationarity condition: −mean σ(−⟨w, d⟩)·d + 2λw = 0
    grad = -(diffs * (1 / (1 + np.exp(diffs @ w)))[:, None]).mean(0) + 2 * lam * w
    assert np.abs(grad).max() < 1e-7


def test_cross_validation_holds_out_each_fold():
    noise = np.random.default_rng(3).normal(size=(100, 60))
    _, cv = cross_validated_lambda(noise, lambdas=(1e-4, 1.0))
    assert set(cv) == {1e-4, 1.0} and all(v < 0.75 for v in cv.values())  # (no fold sees its own pairs)
    signal, u = _planted(100, 60, 4.0, 4)
    lam_s, cv_s = cross_validated_lambda(signal * np.sign(signal @ u)[:, None])
    assert max(cv_s.values()) > 0.9 and cv_s[lam_s] == max(cv_s.values())


PAIRS = [
    Pair("kindness matters", "yes it does", "no", "t", "t0"),
    Pair("is water wet", "yes", "no it is not", "t", "t1"),
    Pair("honesty matters", "no", "yes indeed", "t", "t2"),
    Pair("be kind", "yes", "no", "t", "t3"),
]


def test_features_are_a_plain_forward_of_each_response():
    lm = make_tiny_lm(dtype=torch.float64)
    f = pair_features(lm, PAIRS, chat_template=False)
    for i, p in enumerate(PAIRS):
        for j, resp in enumerate((p.chosen, p.rejected)):
            prompt = lm.tokenizer(p.prompt, add_special_tokens=False)["input_ids"]
            ids = prompt + lm.tokenizer(" " + resp, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                out = lm.model(torch.tensor([ids]), output_hidden_states=True)
            lp = torch.log_softmax(out.logits[0, :-1], -1)
            k = len(prompt)
            logprob = lp[torch.arange(k - 1, len(ids) - 1), torch.tensor(ids[k:])].sum().item()
            assert f["logprob"][i, j] == pytest.approx(logprob, abs=1e-9)
            h = out.hidden_states[-1][0]
            np.testing.assert_allclose(f["last"][i, j], h[-1].numpy(), atol=1e-9)
            np.testing.assert_allclose(f["mean"][i, j], h[k:].mean(0).numpy(), atol=1e-9)


def test_frozen_baselines_reference_accuracy_is_the_log_probability_comparison():
    lm = make_tiny_lm(dtype=torch.float64)
    b = frozen_baselines(lm, PAIRS, PAIRS[1:], chat_template=False)
    f = pair_features(lm, PAIRS[1:], chat_template=False)
    want = np.mean(np.where(f["logprob"][:, 0] > f["logprob"][:, 1], 1.0, 0.0))
    assert want != 0.5  # (so that chosen and rejected swapped would show)
    assert b["reference_logprob"]["test"] == want and b["n"] == {"train": 4, "test": 3}
    lo, hi = b["reference_logprob"]["test_ci95"]
    assert lo <= want <= hi
    for key in ("last", "mean"):
        assert 0 <= b["linear_probe"][key]["train"] <= 1 and b["linear_probe"][key]["lambda"] > 0
