"""Why TRL's logged DPO losses did not match rmgap's: TRL 1.16's configs default to ``bf16=True``,
which on CPU runs the policy's forward under bf16 autocast. This script shows it on SmolLM2, after one
Adam step (lr 1e-6, β 0.01) on the same 16 Persona pairs, probed on 8 other pairs:

    pip install trl datasets
    python benchmarks/trl_bf16_check.py      # ≈ 3 min on 2 cores

For TRL with bf16 on (its default) and off it prints the margin TRL itself logs on the probe pairs,
the margin of the same weights by rmgap's scorer (fp32), and ln π of one probe response under TRL's
wrapped forward and under the model class's plain forward. Then the margin of rmgap's own step.
"""

from __future__ import annotations

from functools import partial

import torch
from train import held_out_metrics, trl_trainer  # benchmarks/train.py, beside this script

from lm_probes.data.pairs import encode_pairs
from lm_probes.data.persona import persona_data
from lm_probes.lm.loading import load_lm, smollm2_checkpoint
from lm_probes.rm.config import TrainConfig
from lm_probes.rm.trainer import train_reward_model


def response_logprob(forward, enc) -> float:
    """Σ ln π over the response tokens of one encoding, via ``forward(input_ids=...)``."""
    ids = torch.tensor([enc.input_ids])  # (1, T)
    with torch.no_grad():
        logp = forward(input_ids=ids).logits.float().log_softmax(-1)[0, :-1]  # (T-1, V)
    return logp.gather(1, ids[0, 1:, None])[enc.prompt_len - 1 :].sum().item()


def main() -> dict:
    data = persona_data(n_train=80, n_test=40, pairs_per_statement=2)["train"]
    train_pairs, probe_pairs = data[:16], data[16:24]
    cfg = TrainConfig(objective="im_rm", epochs=1, lr=1e-6, batch_size=16, micro_batch=8, progress=False)
    lm = load_lm("smollm2")
    encs, probe = (encode_pairs(lm.tokenizer, p).encodings for p in (train_pairs, probe_pairs))
    path = str(smollm2_checkpoint()[0])
    del lm
    out = {}
    print(
        f"{'TRL bf16':>9} {'TRL-logged margin':>17} {'fp32 margin':>11} "
        f"{'ln π (TRL fwd)':>14} {'ln π (fp32)':>11}"
    )
    for bf16 in (True, False):
        trainer, _, load = trl_trainer("im_rm", encs, cfg, path, bf16=bf16)
        trainer.train()
        batch = trainer.data_collator(
            [
                {
                    "prompt_ids": list(c.input_ids[: c.prompt_len]),
                    "chosen_ids": list(c.response_ids),
                    "rejected_ids": list(r.response_ids),
                }
                for c, r in probe
            ]
        )
        trainer.model.eval()
        with torch.no_grad():
            trainer.compute_loss(trainer.model, batch)
        logged = float(trainer._metrics["eval"]["rewards/margins"][-1])  # what TRL reports
        fp32 = held_out_metrics(cfg, probe_pairs, load)["margin"]
        model = trainer.model
        lp_trl = response_logprob(model, probe[0][0])  # the instance forward TRL trains with
        lp_fp32 = response_logprob(partial(type(model).forward, model), probe[0][0])
        out[f"bf16={bf16}"] = dict(logged_margin=logged, fp32_margin=fp32, lnpi_trl=lp_trl, lnpi_fp32=lp_fp32)
        print(f"{bf16!s:>9} {logged:>17.6f} {fp32:>11.6f} {lp_trl:>14.2f} {lp_fp32:>11.2f}", flush=True)
    s = train_reward_model(load_lm("smollm2"), train_pairs, {"probe": probe_pairs}, cfg).summary
    out["rmgap_margin"] = s["final"]["probe"]["rewards/margins"]
    print(f"\nrmgap, the same step: fp32 margin {out['rmgap_margin']:.6f}")
    return out


if __name__ == "__main__":
    main()
