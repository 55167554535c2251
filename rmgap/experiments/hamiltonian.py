"""Verification without generation on a real LM (the paper's §3 Hamiltonian-cycle experiment;
theory/README.md §2, Theorem 1).

    rmgap hamiltonian --preset cpu --out figures/hamiltonian-n6_preset-cpu_on-2cpu  # SmolLM2, 2 cores, 74 min
    rmgap hamiltonian --preset cpu --objectives none --out runs/ham-ref     # the reference LM alone
    rmgap hamiltonian --preset paper --model EleutherAI/pythia-1b --device cuda --out runs/hamiltonian

Data (lm_probes.data.cycles): graphs on n vertices, a planted Hamiltonian cycle plus i.i.d. edges;
y+ = the planted cycle, y− = a random permutation with a non-edge; <sep> and <edge_sep> are new tokens
(embeddings resized, the new rows drawn with the run's seed, identical in every copy of the model).
The EX-RM and the IM-RM (and any --objectives of lm_probes.rm.rewards) train on the same pairs from the
same initial LM. Then, for the reference LM and each trained LM:
  * generation: one sample per prompt of the first n_generate train and test graphs, temperature 1,
    top-k 0, top-p 1, at most 2n − 1 new tokens (a response's length) or until end-of-sequence;
    correct = exactly n distinct vertices joined by <sep>, consecutive ones (and the last with the
    first) adjacent;
  * exact generation mass: every Hamiltonian cycle of each test graph (theory.graphs.hamiltonian_cycles:
    each start and direction) as a token sequence, ln π(C(x)|x) = logsumexp of their ln π, in batched
    passes that share the prompt; the EX-RM's LM (its backbone with its own output head) is the control;
  * before training (lm_probes.probe.frozen): a linear head fitted on the reference LM's frozen states
    of the training pairs (what an EX-RM that trains only its head can reach) and ln π_ref(y+) vs
    ln π_ref(y−), on the test pairs: whether θ₀ verifies at all;
  * Theorem 1's tilt τ(p) (theory.tilted_correct_mass) at p = π_ref(C(x)|x) and δ = the IM-RM's own
    margin on that graph's test pair: what the least-generating verifier with that margin would put on C.

Presets: ``paper`` = the authors' (10 vertices, edge probability 0.2, 1 000 train / 200 test graphs,
15 epochs, Adam lr 1e-6, effective batch 32, β 0.01). ``cpu`` = SmolLM2 on 6-vertex graphs, with
fewer graphs and epochs, batch 8 and a 10× larger learning rate (the arithmetic and the measured
reasons are in PRESETS' comment), every epoch evaluated, generation on 64 train / 64 test prompts and
the exact mass on 16 test graphs. Both give the prompt without a chat template, as the authors'
Pythia-1B saw it (--chat-template to use the model's).
Output (--out): summary.json (accuracy.<train|test>.<rm>, generation.<reference|rm>.correct_fraction
.<train|test>, generation_mass.<reference|rm>.mean_log10, tilt, the paper's numbers), table.md,
hamiltonian.png, samples.jsonl.gz (every generation), and each RM's training outputs under <out>/<rm>/.
Paper (Pythia-1B): train accuracy 1 / 1; test accuracy EX-RM 0.980, IM-RM 0.993; correct generations 0.
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from lm_probes.data.cycles import add_graph_tokens, hamiltonian_data
from lm_probes.lm.generation import SamplingConfig
from lm_probes.probe.frozen import frozen_baselines
from lm_probes.rm.config import TrainConfig
from lm_probes.rm.evaluation import ACCURACY, current_names
from lm_probes.rm.rewards import REWARDS
from lm_probes.rm.trainer import train_reward_model
from rmgap import flags
from rmgap.experiments import hamiltonian_generation as gen_
from rmgap.experiments.hamiltonian_generation import generation_check, generation_mass
from rmgap.experiments.hamiltonian_report import (
    PAPER,
    accuracy_ci,
    header,
    mass_vs_reference,
    report,
    table_markdown,
    write_hamiltonian,
    write_seeds,
)
from theory import tilted_correct_mass, tilting_bound

# Both presets give the prompt raw, without a chat template, as the authors' Pythia-1B (which has none)
# saw it. cpu: 6-vertex graphs (paper 10). A 6-vertex prompt is ~54 SmolLM2 tokens and a response 11,
# so a pair is ~130 tokens (a 10-vertex pair ~240); 256 pairs took 4.3 min per epoch for the IM-RM
# and 2.1 min for the EX-RM (measured), so 8 epochs (256 Adam steps at batch 8) fit where 10 vertices
# allowed 2.
# Why: at 64 steps the EX-RM was at chance at both sizes (figures/hamiltonian_preset-cpu_on-2cpu, the
# earlier cpu preset: test 0.510), so it needs the steps 6 vertices make affordable; and a uniform
# sampler over the n! vertex orders finds a cycle with probability mean |C(x)|/n! = 163.75/10! ≈ 4.5e-5
# on the 16 mass graphs at 10 vertices, which 64 samples cannot measure; at 6 vertices it is ≥ 12/720.
# A 6-vertex test graph has 12–72 cycle sequences (every cycle × n starts × 2 directions; 10 vertices:
# 20 to a few thousand), and the exact mass runs on 16 test graphs
# (paired across the LMs); generation on 64 + 64 prompts, free and format-constrained. The reductions
# (graphs 1 000 → 256, test 200 → 100, epochs 15 → 8, batch 32 → 8, lr 1e-6 → 1e-5) buy time; edge
# probability 0.2 is the authors'. Every epoch is evaluated (the learning curves in <out>/<rm>/).
PRESETS = {
    "paper": dict(
        graphs=dict(n=10, edge_prob=0.2, n_train=1000, n_test=200),
        train=dict(epochs=15, lr=1e-6, batch_size=32, micro_batch=8, beta=0.01, chat_template=False),
        n_eval_train=200,
        n_generate=200,
        n_mass=200,
    ),
    "cpu": dict(
        graphs=dict(n=6, edge_prob=0.2, n_train=256, n_test=100),
        train=dict(
            epochs=8,
            lr=1e-5,
            batch_size=8,
            micro_batch=8,
            beta=0.01,
            chat_template=False,
            eval_every_epoch=True,
        ),
        n_eval_train=100,
        n_generate=64,
        n_mass=16,
    ),
}


def analyse(
    lm, data: dict, preset: dict, sampling: SamplingConfig, chat_template: bool, quiet: bool, runtime=None
):
    """Generation on train and test prompts and the exact mass on test graphs, for one LM. ``runtime``
    (lm_probes.distributed): the mass is shared over the processes; each samples the same generations."""
    lm.model.eval()
    return {
        **{
            key: {
                split: generation_check(lm, data[split], preset["n_generate"], sampling, constrained)
                for split in ("train", "test")
            }
            for key, constrained in (("generation", False), ("generation_constrained", True))
        },
        "mass": generation_mass(
            lm, data["test"], preset["n_mass"], chat_template=chat_template, quiet=quiet, runtime=runtime
        ),
    }


def tilt(reference_log10: list, im_rewards: np.ndarray, beta: float) -> dict:
    """Theorem 1's τ(p) per test graph at p = π_ref(C|x) and δ = the IM-RM's margin on its test pair."""
    k = len(reference_log10)
    p = 10.0 ** np.asarray(reference_log10)
    delta = im_rewards[:k, 0] - im_rewards[:k, 1]
    with np.errstate(divide="ignore"):
        log10_tau = np.log10(tilted_correct_mass(p, margin=delta, beta=beta))
        log10_bound = np.log10(tilting_bound(p, margin=np.maximum(delta, 0), beta=beta))
    return {
        "margin_mean": float(delta.mean()),
        "log10": log10_tau.tolist(),
        "mean_log10": float(np.mean(log10_tau)),
        "bound_mean_log10": float(np.mean(log10_bound)),
    }


def run_hamiltonian(
    lm_factory, data, objectives, preset, cfg: TrainConfig, out, resume, sampling, quiet, runtime=None
) -> dict:
    """Train every objective; analyse the reference LM and each trained LM. → {name: record}.
    ``runtime`` (lm_probes.distributed): training and the mass shared over processes."""
    chat, main_process = cfg.chat_template, runtime is None or runtime.is_main
    train = data["train"].pairs()
    evals = {"train": data["train"].pairs(preset["n_eval_train"]), "test": data["test"].pairs()}
    reference = lm_factory()
    records = {"reference": analyse(reference, data, preset, sampling, chat, quiet, runtime)}
    # what θ₀ verifies before training: a head on its frozen states, and π_ref itself
    records["reference"]["frozen"] = frozen_baselines(reference, train, evals["test"], chat_template=chat)
    records["reference"]["model"] = reference.info
    for obj in objectives:
        lm = lm_factory()
        res = train_reward_model(
            lm, train, evals, replace(cfg, objective=obj), out / obj if out else None, resume, runtime=runtime
        )
        records[obj] = {"train_result": res, **analyse(lm, data, preset, sampling, chat, quiet, runtime)}
        if not main_process:
            continue
        acc = {s: current_names(res.summary["final"][s])[ACCURACY] for s in evals}
        gen = records[obj]["generation"]["test"]["correct_fraction"]
        print(f"{obj}: accuracy {acc}, correct generations (test) {gen:.3f}", flush=True)
    return records


def make_summary(records: dict, beta: float) -> dict:
    rms = [k for k in records if k != "reference"]
    summary = {
        "accuracy": {
            s: {rm: current_names(records[rm]["train_result"].summary["final"][s])[ACCURACY] for rm in rms}
            for s in ("train", "test")
        },
        "generation": {
            name: {
                key: {s: rec["generation"][s][key] for s in ("train", "test")}
                for key in ("correct_fraction", "permutation_fraction")
            }
            for name, rec in records.items()
        },
        "generation_mass": {
            name: {"mean_log10": rec["mass"]["mean_log10"], "log10": rec["mass"]["log10"]}
            for name, rec in records.items()
        },
        "generation_constrained": gen_.constrained_summary(records),
        "n_cycle_sequences_mean": float(np.mean(records["reference"]["mass"]["n_sequences"])),
        "frozen_baselines": records["reference"].get("frozen"),
    }
    if "im_rm" in records:
        rewards = records["im_rm"]["train_result"].rewards["test"]
        summary["tilt"] = tilt(records["reference"]["mass"]["log10"], rewards, beta)
    summary["mass_vs_reference"] = mass_vs_reference(summary)
    return summary


def preset_of(args) -> dict:
    """The --preset's settings with the flags' overrides (graphs, training, chat template)."""
    preset = {k: dict(v) if isinstance(v, dict) else v for k, v in PRESETS[args.preset].items()}
    overrides = {
        "n": args.vertices,
        "edge_prob": args.edge_prob,
        "n_train": args.n_train,
        "n_test": args.n_test,
    }
    preset["graphs"].update({k: v for k, v in overrides.items() if v is not None})
    preset["train"].update(flags.preset_overrides(args))
    preset["train"]["chat_template"] |= args.chat_template
    if args.eval_every_epoch:  # (the paper preset evaluates every epoch already: TrainConfig's default)
        preset["train"]["eval_every_epoch"] = True
    return preset


def _parser():
    ap = flags.parser("rmgap hamiltonian", __doc__)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument(
        "--objectives",
        default="ex_rm,im_rm",
        help=f"comma list of: {', '.join(REWARDS)}; none: analyse the reference LM alone (no training)",
    )
    for flag in ("vertices", "edge-prob", "n-train", "n-test", "epochs", "lr"):
        ap.add_argument(
            f"--{flag}", type=float if flag in ("edge-prob", "lr") else int, help="override the preset"
        )
    ap.add_argument("--chat-template", action="store_true", help="wrap prompts in the model's chat template")
    ap.add_argument(
        "--eval-every-epoch", action="store_true", help="evaluate each RM after every epoch (learning curves)"
    )
    ap.add_argument("--resume", action="store_true", help="continue each RM from <out>/<objective>/")
    ap.add_argument(
        "--seeds",
        help="comma list of training seeds (data order, head, sampling; the graphs stay --seed's): each "
        "run under <out>/seed<k>/, then summary_seeds.json and table_seeds.md over seeds and graphs",
    )
    flags.add_lora_arg(ap)
    flags.add_model_args(ap)
    flags.add_run_args(ap, "runs/hamiltonian")
    ap.add_argument("--report", type=Path, metavar="RUN", help="rewrite RUN's table.md from its summary.json")
    return ap


def main(argv=None, lm_factory=None) -> dict:
    args = _parser().parse_args(argv)
    if args.report:
        return report(args.report)
    objectives = (
        () if args.objectives == "none" else flags.parse_list(args.objectives, tuple(REWARDS), "--objectives")
    )
    if args.seeds and not objectives:
        raise ValueError("--seeds needs --objectives to train: the reference LM alone has no training seed")
    preset = preset_of(args)
    data = hamiltonian_data(**preset["graphs"], seed=args.seed)
    cfg = flags.train_config(args, **preset["train"])
    n = preset["graphs"]["n"]
    sampling = SamplingConfig(
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        max_new_tokens=2 * n - 1,
        seed=args.seed,
        chat_template=cfg.chat_template,
    )
    runtime, factory = flags.model_factory(args, lm_factory)
    if runtime.lockstep:
        raise ValueError("rmgap hamiltonian samples from the trained LMs, not done on sharded ones: use DDP")
    seeds = flags.parse_seeds(args.seeds) if args.seeds else [args.seed]
    runs = {}
    for k in seeds:  # (one seed: the plain run in --out; several: each in <out>/seed<k>/)
        out = args.out / f"seed{k}" if args.seeds else args.out
        t0 = time.perf_counter()
        records = run_hamiltonian(
            lambda: add_graph_tokens(factory(), seed=args.seed),
            data,
            objectives,
            preset,
            replace(cfg, seed=k),
            out,
            args.resume,
            replace(sampling, seed=k),
            args.quiet,
            runtime,
        )
        if not runtime.is_main:
            continue  # the main process summarises and writes
        summary = make_summary(records, cfg.beta)
        summary.update(
            config={
                **preset,
                "train": asdict(replace(cfg, seed=k)),
                "sampling": asdict(replace(sampling, seed=k)),
            },
            preset=args.preset,
            command=flags.command_line("rmgap hamiltonian", argv),
            model=records["reference"]["model"],
            seconds=time.perf_counter() - t0,
            paper=PAPER,
        )
        summary["accuracy_ci95"] = accuracy_ci(
            {s: {rm: records[rm]["train_result"].rewards[s] for rm in objectives} for s in ("train", "test")}
        )
        summary["markdown"] = table_markdown(summary, header(summary))
        write_hamiltonian(summary, records, out)
        print("\n" + summary["markdown"])
        runs[k] = (summary, records)
    if not runtime.is_main:
        return {}
    if not args.seeds:
        return runs[args.seed][0]
    return write_seeds(runs, args.out)


if __name__ == "__main__":
    main()
