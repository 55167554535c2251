"""rmgap eval against the tools people compare it with, on the same token ids, in fp32.

- TRL: DPOTrainer's own functions. Per example, ``compute_ref_log_probs`` (the per-sequence sum of
  response-token log-probs TRL's DPO loss uses, for any model it is given) of the policy and of the
  reference, β·(policy − reference): the implicit reward DPOTrainer logs as ``rewards/chosen`` /
  ``rewards/rejected``; and ``DPOTrainer.evaluate()``'s means and strict ``rewards/accuracies``.
  The dataset is handed to TRL already tokenised as rmgap tokenises it (prompt through the chat
  template, response tokens after it, no end-of-turn token), as benchmarks/train.py does.
- RewardBench: its reference-free DPO scores, written out here from rewardbench/dpo.py's
  ``get_batch_logps`` (labels shifted by one, prompt tokens masked with -100, per-token log-probs
  of the labels; "avg": their mean, "sum": their sum; no β) and its strict accuracy
  (chosen > rejected). RewardBench also adds BOS and EOS tokens of its own; the comparison is on
  rmgap's tokens. Its default reference-free score, "norm" (−‖per-token log-probs‖₂), has no
  registered reward type.
"""

from __future__ import annotations

import json

import pytest
import torch

from lm_probes.common import read_jsonl_rows
from lm_probes.data.pairs import encode_pairs
from rmgap.commands import eval as eval_cmd
from tests.commands.test_eval import pairs_file  # noqa: F401 (a fixture)
from tests.conftest import TRAIN, make_tiny_lm


def _rmgap(tmp_path, pairs_file, policy, ref, *args):  # noqa: F811
    out = tmp_path / "o"
    res = eval_cmd.main(["--data", f"mine={pairs_file}", *args, "--out", str(out)], lm=policy, ref_lm=ref)
    rows = read_jsonl_rows(out / "rewards_mine.jsonl.gz")
    return res, torch.tensor([[r["reward_chosen"], r["reward_rejected"]] for r in rows], dtype=torch.float64)


def _trl_dpo_trainer(tmp_path, policy, ref, beta, pairs=TRAIN):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    class PreTokenized(DPOTrainer):
        def _prepare_dataset(self, dataset, *args, **kwargs):
            return dataset  # already rmgap's token ids

    encs = encode_pairs(policy.tokenizer, pairs).encodings
    ds = Dataset.from_list(
        [
            {
                "prompt_ids": list(c.input_ids[: c.prompt_len]),
                "chosen_ids": list(c.response_ids),
                "rejected_ids": list(r.response_ids),
            }
            for c, r in encs
        ]
    )
    args = DPOConfig(
        output_dir=str(tmp_path / "trl"),
        beta=beta,
        per_device_eval_batch_size=len(encs),
        report_to=[],
        use_cpu=True,
        bf16=False,
        disable_tqdm=True,
    )
    return PreTokenized(
        model=policy.model,
        ref_model=ref.model,
        args=args,
        train_dataset=ds,
        eval_dataset=ds,
        processing_class=policy.tokenizer,
    )


def test_rmgap_eval_gives_trls_dpo_rewards_per_example(tmp_path, pairs_file):  # noqa: F811
    pytest.importorskip("trl")
    policy, ref = make_tiny_lm(dtype=torch.float32, seed=1), make_tiny_lm(dtype=torch.float32, seed=0)
    res, ours = _rmgap(tmp_path, pairs_file, policy, ref, "--ref", "x", "--beta", "0.1")
    trainer = _trl_dpo_trainer(tmp_path, policy, ref, beta=0.1)
    batch = next(iter(trainer.get_eval_dataloader()))
    with torch.no_grad():
        pol = trainer.compute_ref_log_probs(trainer.model, batch)  # (chosen, rejected) sums, policy
        rf = trainer.compute_ref_log_probs(trainer.ref_model, batch)  # the same, reference
    trl = torch.stack([0.1 * (pol[i] - rf[i]) for i in (0, 1)], dim=1).double()
    assert ours.shape == (4, 2) and torch.allclose(ours, trl, atol=2e-6, rtol=0), (ours, trl)
    logged = trainer.evaluate()  # DPOTrainer's own loss path and metric names
    assert logged["eval_rewards/chosen"] == pytest.approx(ours[:, 0].mean().item(), abs=2e-6)
    assert logged["eval_rewards/rejected"] == pytest.approx(ours[:, 1].mean().item(), abs=2e-6)
    assert logged["eval_rewards/accuracies"] == res["sets"]["mine"]["accuracy_strict"]


def _rewardbench_ref_free(lm, norm: str) -> torch.Tensor:
    """RewardBench's reference-free score of each (chosen, rejected), its get_batch_logps rule."""
    out = []
    for pair in encode_pairs(lm.tokenizer, TRAIN).encodings:
        row = []
        for e in pair:
            ids = torch.tensor([e.input_ids])
            labels = ids.clone()
            labels[0, : e.prompt_len] = -100
            with torch.no_grad():
                logits = lm.model(input_ids=ids).logits
            labels, logits = labels[:, 1:].clone(), logits[:, :-1, :]
            mask = labels != -100
            labels[~mask] = 0
            per_token = torch.gather(logits.log_softmax(-1), 2, labels.unsqueeze(2)).squeeze(2)
            s = (per_token * mask).sum(-1)
            row.append((s / mask.sum(-1) if norm == "avg" else s).item())
        out.append(row)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("norm,reward", [("avg", "im_rm_mean_no_ref"), ("sum", "im_rm_no_ref")])
def test_rewardbench_reference_free_scores_are_reproduced(tmp_path, pairs_file, norm, reward):  # noqa: F811
    lm = make_tiny_lm(dtype=torch.float32, seed=2)
    res, ours = _rmgap(tmp_path, pairs_file, lm, None, "--reward", reward)  # β defaults to 1
    theirs = _rewardbench_ref_free(lm, norm)
    assert torch.allclose(ours, theirs, atol=2e-6, rtol=0), (ours, theirs)
    strict = (theirs[:, 0] > theirs[:, 1]).double().mean().item()
    rb = json.loads((tmp_path / "o" / "rewardbench_results.json").read_text())
    assert rb["mine"] == strict and rb["model_type"] == "DPO Ref. Free" and res["beta"] == 1.0
