"""Training throughput of lm_probes.rm.trainer on SmolLM2-135M-Instruct (CPU, float32), next to TRL's
RewardTrainer (for ex_rm) and DPOTrainer (for im_rm) on the same model, data and hyperparameters, and
next to this machine's float32 matrix-product rate, all measured in one run.

    pip install trl datasets          # for the comparison only; not a dependency of rmgap
    python benchmarks/train.py        # one epoch over 160 Persona pairs per trainer
    python benchmarks/train.py --quick

Both sides train on the same token ids (rmgap's encoder; TRL gets them pre-tokenized), in fp32
(TRL's configs default to bf16 autocast, switched off here), without gradient checkpointing (TRL
1.16's configs turn it on by default: activations recomputed in the backward pass, which rmgap does
not do; runs before 2026-12-07 left it on), Adam without clipping or weight decay,
one epoch, effective batch 16. "At equal metrics" is checked, not assumed: every trained model, TRL's
included, is scored by the same rmgap evaluation on held-out Persona pairs (original responses, test
prompts), and the mean training loss is printed next to it.

pairs/s counts training pairs per second of training, evaluation excluded; rmgap's time includes its
one reference pass, DPOTrainer's its per-step reference passes (or, with precompute_ref, its
construction, which runs the reference pass). GFLOP/s counts the work of whole sequences, the same
for every trainer: 6 · N_body per token for forward + backward, plus 6 · N_head per position where the
objective needs the output head (response positions for im_rm, none for ex_rm; TRL 1.16 also forms
logits there only), plus 2 · (the same) for im_rm's reference pass. N_head is the output head (tied
to the input embedding, whose lookup is free); attention-score FLOPs are left out (sequences are ~60
tokens). rmgap runs fewer tokens than that: a Persona pair's two responses share a prompt of ~50
tokens, and rmgap's scorer runs each distinct prompt of a micro-batch once, its KV cache expanded
over the responses (lm_probes.lm.scoring's cached mode); TRL runs every sequence whole. The tokens
rmgap's model ran are counted (``tokens_run`` in training, ``reference_tokens_run``: benchmarks/
_limit.TokensRun), and ``flop_check`` divides the same formula on them by the FLOPs of the recorded
products. "of limit": the time rmgap's own matrix products take when each is replayed alone at its
shape (best of 5, benchmarks/_limit.py; listed by a dispatch-mode recorder, _limit.record_gemms, on
a second rmgap run of the same data, inside the timed parts only), over the trainer's time: at most
100 % by construction for rmgap (TRL's rows divide the same products' time by TRL's time). Targets
(issues 5, 26): ≥ 1.5× TRL's pairs/s for im_rm at equal metrics, and ≥ 40 % of the limit. Without
TRL installed the comparison rows say so.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from lm_probes.common import matmul_rate, write_json
from lm_probes.common import train_flops as model_flops
from lm_probes.data.pairs import encode_pairs
from lm_probes.data.persona import persona_data
from lm_probes.lm.encoding import pad_id_of
from lm_probes.lm.loading import load_lm, smollm2_checkpoint
from lm_probes.rm.config import TrainConfig
from lm_probes.rm.evaluation import ACCURACY, current_names, evaluate_sets
from lm_probes.rm.reward_model import RewardModel
from lm_probes.rm.rewards import initial_head
from lm_probes.rm.trainer import TIMED_LABELS, train_reward_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _limit import TokensRun, record_gemms, replay_limit, share_of_limit


def _t(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def held_out_metrics(cfg, test_pairs, load_weights=None) -> dict:
    """rmgap's own evaluation of a trained model on held-out pairs (π_ref = the initial SmolLM2).
    ``load_weights(rm)`` copies a TRL-trained model into a fresh RewardModel after the reference pass."""
    lm = load_lm("smollm2")
    rm = RewardModel(lm, cfg)
    encs = encode_pairs(lm.tokenizer, test_pairs).encodings
    rm.fill_eval_reference({"held_out": encs})
    if load_weights:
        load_weights(rm)
    rm.model.eval()
    return brief(evaluate_sets(rm, {"held_out": encs})["held_out"].metrics)


def brief(m: dict) -> dict:
    return {"loss": m["loss"], "accuracy": current_names(m)[ACCURACY], "margin": m["rewards/margins"]}


def ours(pairs, test_pairs, cfg, flops):
    s = train_reward_model(load_lm("smollm2"), pairs, {"held_out": test_pairs}, cfg).summary
    # optimisation steps plus the one reference pass (TRL's DPOTrainer does its reference passes inside
    # its steps); evaluation excluded
    sec = s["train_seconds"] + s["reference_seconds"]
    # the limit: the same run's matrix products inside the timed parts (a second run, recorded: the
    # same data order, so the same shapes), each replayed alone; the tokens its training passes ran
    lm = load_lm("smollm2")
    with TokensRun(lm.model) as run:
        gemms = record_gemms(
            lambda: train_reward_model(lm, pairs, {"held_out": test_pairs[:1]}, cfg), within=TIMED_LABELS
        )
    # and those its reference pass ran: the same call on the same encodings, counted alone
    rm = RewardModel(load_lm("smollm2"), cfg)
    with TokensRun(rm.model) as ref:
        rm.fill_reference([e for p in encode_pairs(rm.lm.tokenizer, pairs).encodings for e in p])
    return dict(
        seconds=sec,
        pairs_per_s=len(pairs) * cfg.epochs / sec,
        gflops=flops * cfg.epochs / sec / 1e9,
        limit=replay_limit(gemms),
        tokens_run=run.grad,
        reference_tokens_run=ref.no_grad if rm.rt.uses_reference else 0,
        train_loss=s["history"][-1]["train_loss"],
        held_out=brief(s["final"]["held_out"]),
    )


def trl_trainer(kind, encs, cfg, path, precompute_ref=False, bf16=False):
    """A TRL trainer on exactly rmgap's token ids: the dataset is handed over already tokenized (the
    same chat template rendering, no end-of-turn token after the response), so both trainers score the
    same sequences. fp32, no clipping, AdamW without weight decay: as in rmgap (plain Adam).
    Returns (trainer, seconds its construction took, load) with ``load(rm)`` copying the trained
    weights into an rmgap RewardModel."""
    from datasets import Dataset

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
        max_grad_norm=0.0,  # rmgap does not clip
        bf16=bf16,  # TRL configs default to bf16 autocast, also on CPU; rmgap (and the paper) use fp32
        gradient_checkpointing=False,  # TRL 1.16 defaults to True (recomputes); rmgap stores activations
        lr_scheduler_type="constant",
        disable_tqdm=True,
    )
    if kind == "ex_rm":
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from trl import RewardConfig, RewardTrainer

        ds = Dataset.from_list(
            [{"chosen_ids": list(c.input_ids), "rejected_ids": list(r.input_ids)} for c, r in encs]
        )
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
        tok = AutoTokenizer.from_pretrained(path)
        model.config.pad_token_id = pad_id_of(tok)
        with torch.no_grad():  # the same initial head as rmgap's EX-RM
            model.score.weight.copy_(initial_head(model.config.hidden_size, cfg.seed)[None])
        t_built = time.perf_counter()
        trainer = RewardTrainer(
            model=model, args=RewardConfig(**common), train_dataset=ds, processing_class=tok
        )

        def load(rm):
            rm.model.model.load_state_dict(trainer.model.model.state_dict())
            rm.u.data.copy_(trainer.model.score.weight.detach()[0])

    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl import DPOConfig, DPOTrainer

        class PreTokenized(DPOTrainer):
            def _prepare_dataset(self, dataset, *args, **kwargs):
                return dataset  # already rmgap's token ids

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
        model = AutoModelForCausalLM.from_pretrained(path)
        tok = AutoTokenizer.from_pretrained(path)
        args = DPOConfig(beta=cfg.beta, precompute_ref_log_probs=precompute_ref, **common)
        t_built = time.perf_counter()
        trainer = PreTokenized(model=model, args=args, train_dataset=ds, processing_class=tok)

        def load(rm):
            rm.model.load_state_dict(trainer.model.state_dict())

    return trainer, time.perf_counter() - t_built, load


def trl_run(kind, encs, test_pairs, cfg, path, precompute_ref=False):
    trainer, built_s, load = trl_trainer(kind, encs, cfg, path, precompute_ref)
    t0 = time.perf_counter()
    out = trainer.train()
    # with precompute_ref the construction runs the reference pass, so it is timed too
    sec = time.perf_counter() - t0 + (built_s if precompute_ref else 0.0)
    return dict(
        seconds=sec,
        pairs_per_s=len(encs) * cfg.epochs / sec,
        train_loss=out.training_loss,
        held_out=held_out_metrics(cfg, test_pairs, load),
    )


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="32 training pairs, 16 held-out pairs")
    ap.add_argument("--no-trl", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    data = persona_data(n_train=80, n_test=40, pairs_per_statement=2)
    pairs, test_pairs = data["train"], data["eval"]["original_test"]
    if args.quick:
        pairs, test_pairs = pairs[:32], test_pairs[:16]
    rate = max(matmul_rate() for _ in range(5))  # (for scale only: the ratios use the limit)
    lm = load_lm("smollm2")
    n_head = lm.model.get_output_embeddings().weight.numel()
    n_emb = lm.model.get_input_embeddings().weight.numel()
    n_body = lm.info["n_parameters"] - n_head - (0 if lm.info["tied_head"] else n_emb)
    cfg0 = TrainConfig(epochs=1, lr=1e-6, batch_size=16, micro_batch=8, progress=False)
    encs = encode_pairs(lm.tokenizer, pairs).encodings
    tokens = sum(len(c.input_ids) + len(r.input_ids) for c, r in encs)
    response_tokens = sum(c.response_len + r.response_len for c, r in encs)
    path = str(smollm2_checkpoint()[0])  # the cached HF checkpoint, for TRL's own loaders
    del lm
    print(
        f"float32 square matmul rate {rate:.1f} GFLOP/s (best of 5); {len(pairs)} training pairs, "
        f"{tokens} tokens per epoch, "
        f"{len(test_pairs)} held-out pairs; {torch.get_num_threads()} threads\n"
    )
    head = (
        f"{'objective':>9} {'trainer':>24} {'pairs/s':>7} {'GFLOP/s':>7} {'of limit':>9} "
        f"{'train loss':>10} {'held-out loss':>13} {'held-out acc':>12} {'margin':>9}"
    )
    print(head)

    def show(obj, name, r, ref=None):
        share = (ref or r)["limit"]["seconds"] / r["seconds"]  # rmgap's products alone / this run's time
        r["of_limit"] = share
        flops = f"{r['gflops']:>7.1f} {share:>9.0%}"
        h = r["held_out"]
        line = (
            f"{obj:>9} {name:>24} {r['pairs_per_s']:>7.2f} {flops} {r['train_loss']:>10.4f} "
            f"{h['loss']:>13.5f} {h['accuracy']:>12.3f} {h['margin']:>9.2e}"
        )
        if ref:
            line += f"  rmgap {ref['pairs_per_s'] / r['pairs_per_s']:.2f}×"
        else:
            line += (
                f"  ({r['tokens_run']} of {tokens} tokens run in training, {r['reference_tokens_run']} in "
                f"the reference pass; FLOP formula on them / recorded {r['flop_check']:.3f})"
            )
        print(line, flush=True)

    rows = {}
    trl = {
        "im_rm": [("DPOTrainer", False), ("DPOTrainer(precompute_ref)", True)],
        "ex_rm": [("RewardTrainer", False)],
    }
    for obj in ("im_rm", "ex_rm"):
        cfg = replace(cfg0, objective=obj)
        flops = model_flops(obj, n_body, n_head, tokens, response_tokens)
        r = rows[f"{obj}/rmgap"] = ours(pairs, test_pairs, cfg, flops)
        run_flops = model_flops(
            obj, n_body, n_head, r["tokens_run"], response_tokens, reference_tokens=r["reference_tokens_run"]
        )
        r |= share_of_limit(r["seconds"], r["limit"], run_flops)
        show(obj, "rmgap", r)
        for name, pre in [] if args.no_trl else trl[obj]:
            try:
                t = trl_run(obj, encs, test_pairs, cfg, path, precompute_ref=pre)
            except ImportError as exc:
                print(f"{obj:>9} {name:>24}  not run: {exc} (pip install trl datasets)")
                continue
            t["gflops"] = flops * cfg.epochs / t["seconds"] / 1e9
            rows[f"{obj}/{name}"] = t
            show(obj, name, t, ref=r)
    result = rows | {
        "square_matmul_gflops": rate,
        "tokens": tokens,
        "response_tokens": response_tokens,
        "n_pairs": len(pairs),
        "n_held_out": len(test_pairs),
    }
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
