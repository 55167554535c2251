"""lm_probes.rm.evaluation: pooled evaluation equals pair-by-pair scoring."""

from __future__ import annotations

import numpy as np
import torch

from lm_probes.data.pairs import Pair, encode_pairs
from lm_probes.rm.config import TrainConfig
from lm_probes.rm.evaluation import eval_chunks, evaluate_sets
from lm_probes.rm.reward_model import RewardModel
from tests.conftest import make_tiny_lm


def test_pooled_evaluation_equals_pair_by_pair_scoring_and_token_rewards_sum_to_rewards():
    lm = make_tiny_lm(max_positions=128)
    prompts = ["is the following statement", "i like people"]
    sets = {
        s: [Pair(p, f"yes {w}", f"no {w} {s}") for p in prompts for w in ("sure", "never")]
        for s in ("a", "b")
    }
    ev = {s: encode_pairs(lm.tokenizer, ps).encodings for s, ps in sets.items()}
    chunks = eval_chunks(ev, max_tokens=40)
    flat = [e.input_ids for c in chunks for e in c]
    assert len(flat) == len(set(flat)) == len({e.input_ids for v in ev.values() for p in v for e in p})
    for c in chunks:  # a chunk holds whole prompt groups
        assert (
            len(c) * max(len(e.input_ids) for e in c) <= 40
            or len({e.input_ids[: e.prompt_len] for e in c}) == 1
        )
    rm = RewardModel(lm, TrainConfig(objective="im_rm", beta=0.1))
    rm.fill_eval_reference(ev)
    before = evaluate_sets(rm, ev)
    assert all(np.all(v.rewards == 0) for v in before.values())  # π_θ = π_ref: exactly 0
    with torch.no_grad():
        for p in rm.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    after = evaluate_sets(rm, ev, tokens=True)
    for s, pairs in ev.items():
        with torch.no_grad():
            one_by_one = np.array(
                [[float(rm.rewards([c], rm.ref_eval)), float(rm.rewards([r], rm.ref_eval))] for c, r in pairs]
            )
        np.testing.assert_allclose(after[s].rewards, one_by_one, rtol=1e-9, atol=1e-12)
        sums = np.array([[tc.sum(), tr.sum()] for tc, tr in after[s].token_rewards])
        np.testing.assert_allclose(sums, after[s].rewards, rtol=1e-9, atol=1e-12)
        assert np.abs(after[s].rewards).max() > 1e-4


def test_trl_names_keep_trls_meanings_and_old_files_are_read_under_todays_names():
    """rewards/accuracies is TRL's strict accuracy ((chosen > rejected).float().mean(), as DPOTrainer
    logs it); the ½-ties accuracy is rmgap's own name; a summary written before the rename is renamed
    on reading, never read as if its ½-ties accuracy were strict."""
    from lm_probes.rm.evaluation import ACCURACY, METRICS, current_names, reward_metrics
    from lm_probes.rm.rewards import get_reward_type

    r = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [2.0, 2.0]])  # one win, two ties, one loss
    m = reward_metrics(get_reward_type("ex_rm"), r)
    chosen, rejected = torch.tensor(r[:, 0]), torch.tensor(r[:, 1])
    assert m["rewards/accuracies"] == (chosen > rejected).float().mean().item() == 0.25
    assert m[ACCURACY] == 0.5 and m["rmgap/tie_rate"] == 0.5 and set(m) == set(METRICS)
    assert m["rewards/margins"] == 0.0 and m["rewards/chosen"] == 0.75 and current_names(m) is m
    old = {"rewards/accuracies": 0.5, "rewards/accuracies_strict": 0.25, "rewards/tie_rate": 0.5, "loss": 1}
    new = current_names(old)
    assert new[ACCURACY] == 0.5 and new["rewards/accuracies"] == 0.25 and new["rmgap/tie_rate"] == 0.5
    assert "rewards/accuracies_strict" not in new and new["loss"] == 1
