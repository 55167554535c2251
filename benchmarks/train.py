"""Training throughput of lm_probes.train on SmolLM2-135M-Instruct (CPU, float32), next to TRL's
RewardTrainer (for ex_rm) and DPOTrainer (for im_rm) on the same model, data and hyperparameters, and
next to this machine's float32 matrix-product rate, all measured in one run.

    pip install trl datasets          # for the comparison only; not a dependency of rmgap
    python benchmarks/train.py        # one epoch over 160 Persona pairs per trainer
    python benchmarks/train.py --quick

pairs/s counts training pairs per second of training (evaluation excluded). Achieved FLOP/s uses
the usual 6 · parameters · tokens estimate for a forward + backward pass (the output head counted
through its tied embedding). Targets (issue 5): ≥ 1.3× TRL's pairs/s for im_rm at equal metrics and
≥ 40 % of the measured matmul rate. Without TRL installed the comparison rows say so.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from lm_probes.loading import _smollm2_checkpoint, load_lm
from lm_probes.persona_experiment import persona_data
from lm_probes.train import TrainConfig, encode_pairs, train_reward_model


def matmul_rate(n=2048, repeat=3) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_t(lambda: a @ b) for _ in range(repeat))
    return 2 * n**3 / best / 1e9


def _t(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def ours(pairs, cfg, n_params, tokens):
    s = train_reward_model(load_lm("smollm2"), pairs, {"tiny": pairs[:2]}, cfg)
    train_s = s["train_seconds"]  # optimisation steps only, evaluation excluded
    return dict(
        seconds=train_s,
        pairs_per_s=len(pairs) * cfg.epochs / train_s,
        gflops=6 * n_params * tokens * cfg.epochs / train_s / 1e9,
        final_train_loss=s["history"][-1]["train_loss"],
    )


def trl_run(kind, pairs, cfg, path):
    from datasets import Dataset

    rows = [
        {
            "prompt": [{"role": "user", "content": p.prompt}],
            "chosen": [{"role": "assistant", "content": p.chosen}],
            "rejected": [{"role": "assistant", "content": p.rejected}],
        }
        for p in pairs
    ]
    ds = Dataset.from_list(rows)
    common = dict(
        output_dir="/tmp/rmgap-trl",
        per_device_train_batch_size=cfg.micro_batch,
        gradient_accumulation_steps=cfg.batch_size // cfg.micro_batch,
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.lr,
        logging_steps=10_000,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=cfg.seed,
        optim="adamw_torch",
        weight_decay=0.0,
        lr_scheduler_type="constant",
    )
    if kind == "ex_rm":
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from trl import RewardConfig, RewardTrainer

        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
        tok = AutoTokenizer.from_pretrained(path)
        model.config.pad_token_id = tok.pad_token_id
        trainer = RewardTrainer(
            model=model, args=RewardConfig(**common), train_dataset=ds, processing_class=tok
        )
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl import DPOConfig, DPOTrainer

        model = AutoModelForCausalLM.from_pretrained(path)
        tok = AutoTokenizer.from_pretrained(path)
        trainer = DPOTrainer(
            model=model, args=DPOConfig(beta=cfg.beta, **common), train_dataset=ds, processing_class=tok
        )
    t0 = time.perf_counter()
    out = trainer.train()
    sec = time.perf_counter() - t0
    return dict(seconds=sec, pairs_per_s=len(pairs) * cfg.epochs / sec, final_train_loss=out.training_loss)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="32 pairs")
    ap.add_argument("--no-trl", action="store_true")
    args = ap.parse_args(argv)
    pairs = persona_data(n_train=80, n_test=40, pairs_per_statement=2)["train"]
    if args.quick:
        pairs = pairs[:32]
    rate = matmul_rate()
    lm = load_lm("smollm2")
    n_params = lm.info["n_parameters"]
    cfg0 = TrainConfig(epochs=1, lr=1e-6, batch_size=16, micro_batch=8, progress=False)
    tokens = sum(len(c.input_ids) + len(r.input_ids) for c, r in encode_pairs(lm, pairs, cfg0)[0])
    path = str(_smollm2_checkpoint()[0])  # the cached HF checkpoint, for TRL's own loaders
    del lm
    print(
        f"float32 matmul rate {rate:.1f} GFLOP/s; {len(pairs)} pairs, {tokens} tokens per epoch, "
        f"{torch.get_num_threads()} threads\n"
    )
    print(
        f"{'objective':>10} {'trainer':>14} {'pairs/s':>8} {'GFLOP/s':>8} {'of matmul':>9} {'train loss':>10}"
    )
    rows = {}
    for obj in ("im_rm", "ex_rm"):
        cfg = replace(cfg0, objective=obj)
        r = ours(pairs, cfg, n_params, tokens)
        rows[(obj, "rmgap")] = r
        print(
            f"{obj:>10} {'rmgap':>14} {r['pairs_per_s']:>8.2f} {r['gflops']:>8.1f} "
            f"{r['gflops'] / rate:>8.0%} {r['final_train_loss']:>10.4f}",
            flush=True,
        )
        name = "DPOTrainer" if obj == "im_rm" else "RewardTrainer"
        if args.no_trl:
            continue
        try:
            t = trl_run(obj, pairs, cfg, path)
        except Exception as exc:
            print(f"{obj:>10} {name:>14}  not run: {type(exc).__name__}: {str(exc)[:120]}")
            continue
        rows[(obj, name)] = t
        print(
            f"{obj:>10} {name:>14} {t['pairs_per_s']:>8.2f} {'':>8} {'':>9} {t['final_train_loss']:>10.4f}   "
            f"→ rmgap is {r['pairs_per_s'] / t['pairs_per_s']:.2f}× faster",
            flush=True,
        )
    return {f"{k[0]}/{k[1]}": v for k, v in rows.items()} | {
        "matmul_gflops": rate,
        "tokens": tokens,
        "n_pairs": len(pairs),
    }


if __name__ == "__main__":
    main()
