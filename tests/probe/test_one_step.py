"""lm_probes.probe.one_step: predictions against real steps, first order, the model untouched,
contributions."""

from __future__ import annotations

import numpy as np
import torch

from lm_probes.probe.one_step import ProbeConfig, run_probe
from tests.conftest import PROBE_EVALS, PROBE_TRAIN, make_tiny_lm


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
        run_probe(lm, PROBE_TRAIN, PROBE_EVALS, ProbeConfig(lr=lr, progress=False, modes=("full",)))[
            "summary"
        ]["full"]["im_rm"]["first_order"]["median_rel_error"]
        for lr in (1e-3, 1e-4)
    ]
    assert 5 < errs[0] / errs[1] < 20, errs


def test_probe_restores_the_model(tiny_probe):
    lm = make_tiny_lm()
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    run_probe(lm, PROBE_TRAIN, PROBE_EVALS[:2], ProbeConfig(lr=1e-2, progress=False))
    for k, v in lm.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    out, inp = lm.model.get_output_embeddings().weight, lm.model.get_input_embeddings().weight
    assert out.data_ptr() == inp.data_ptr()  # still tied


def test_contributions_sum_to_the_fixed_state_prediction(tiny_probe):
    for c, r in zip(tiny_probe["contributions"], tiny_probe["records"], strict=True):
        total = sum(np.sum(t["plus"]) - np.sum(t["minus"]) for t in c["im_rm"])
        assert np.isclose(total, r["im_rm_fixed_state"], rtol=1e-10, atol=1e-300)
        assert c["group"] == r["group"] and c["response"] == r["response"]


def test_probe_runs_every_reward_type_on_an_untied_head():
    """A type that reads no logits (the EX-RMs) leaves an untied output head out of the graph: its
    gradient is 0, the probe runs (it crashed there), and the full step's first order matches."""
    from lm_probes.rm.rewards import REWARDS
    from tests.conftest import GRM_WORDS

    lm = make_tiny_lm(tie=False, extra_words=GRM_WORDS)
    head = lm.model.get_output_embeddings().weight
    assert head.data_ptr() != lm.model.get_input_embeddings().weight.data_ptr()
    before = head.detach().clone()
    res = run_probe(
        lm, PROBE_TRAIN, PROBE_EVALS, ProbeConfig(lr=1e-5, progress=False, rewards=tuple(REWARDS))
    )
    full = res["summary"]["full"]
    assert set(full) == set(REWARDS)
    for name in ("ex_rm", "ex_rm_mean", "im_rm"):
        assert full[name]["pearson_first_order"] > 0.9999, name
    assert torch.equal(lm.model.get_output_embeddings().weight, before)


def test_probe_refuses_evaluation_pairs_that_are_all_identical():
    import pytest

    from lm_probes.data.pairs import DataError, Pair

    same = [Pair("kindness matters", "yes", "yes", "same", "e0")]
    with pytest.raises(DataError, match="no evaluation pair to probe: its 1 pair"):
        run_probe(make_tiny_lm(), PROBE_TRAIN, same, ProbeConfig(progress=False))
