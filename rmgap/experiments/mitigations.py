"""Mitigations of IM-RM token-level brittleness, predicted by the one-step probe and measured by
training on Persona (issue 12; theory/README.md §6; the mitigations: lm_probes.rm.mitigations).

    rmgap mitigations --preset cpu --out figures/mitigations_preset-cpu_on-2cpu   # 2 cores, ≈ 90–105 min
    rmgap mitigations --preset cpu --mitigations none,hybrid --resume
    rmgap mitigations --preset paper --model meta-llama/Llama-3.2-1B-Instruct --device cuda

For each mitigation (``none`` = the plain IM-RM, ``ex_rm`` the reference point):
  (a) prediction: one step from θ₀ on the Persona probe set's training triple (with its rewrite where the
      mitigation uses one), under the mitigation's own loss and trainable parameters; exact first
      order over them (lm_probes.probe.direction.first_order_moves) of every evaluation pair's margin
      r(ȳ+) − r(ȳ−). ``paraphrase_over_original`` = mean margin move of the paraphrase group / that
      of the original ("same") group. Token dropout's prediction is the undropped gradient, by
      definition: at θ₀ every mask gives r = 0, so g = ½ and the gradient is linear in the mask, and its
      expectation over masks is the undropped one (an identity checked by enumerating every mask in
      tests/rm/test_mitigations.py, not by this prediction, which applies no mask).
  (b) training: the Persona experiment's data and preset (rmgap.experiments.persona), the
      mitigation's reward type and options; accuracy (ties ½) on original / paraphrased × train / test
      prompts, evaluated after the last epoch.

Presets: ``cpu`` = the Persona cpu preset (4 epochs, Adam lr 1e-5, effective batch 16, β 0.01),
evaluated once at the end (not every epoch) so that the 11 RMs fit ≈ 90–105 min on 2 cores
(paper_notes §6); ``paper`` = the Persona paper preset (50 epochs, lr 1e-6, batch 32), every epoch
evaluated. Output (--out):
table.json (mitigations.<name>.<original|paraphrased>.<train|test>, mitigations.<name>.probe.
paraphrase_over_original), table.md, mitigations.png, and each mitigation's training outputs and
prediction under <out>/<name>/ (its checkpoint deleted once it is written; ``--resume`` skips the
finished ones and continues a stopped one from its checkpoint).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from lm_probes.common import write_json, write_text
from lm_probes.data.persona import persona_data, persona_probe_set
from lm_probes.probe.direction import first_order_moves, step_direction
from lm_probes.probe.one_step import ProbeConfig
from lm_probes.reports import pyplot, save_figure, write_training
from lm_probes.rm.checkpoints import same_config
from lm_probes.rm.config import TrainConfig
from lm_probes.rm.evaluation import ACCURACY, current_names
from lm_probes.rm.mitigations import MITIGATIONS, Mitigation
from lm_probes.rm.trainer import train_reward_model
from rmgap import flags
from rmgap.experiments.persona import PRESETS as PERSONA_PRESETS
from rmgap.experiments.persona import make_table

PRESETS = {
    "cpu": dict(train={**PERSONA_PRESETS["cpu"], "eval_every_epoch": False}, probe_statements=20),
    "paper": dict(train=dict(PERSONA_PRESETS["paper"]), probe_statements=20),
}
PROBE_LR = 1e-3  # the probe's step size (the ratio does not depend on it at first order)


def one_step_prediction(lm, m: Mitigation, probe_set: dict, train_cfg: TrainConfig) -> dict:
    """The mitigation's first-order one-step margin move of every evaluation pair of ``probe_set``
    (lm_probes.data.persona.persona_probe_set) → {"moves": {group: mean}, "paraphrase_over_original"}."""
    cfg = m.config(train_cfg)
    d = step_direction(lm, cfg, m.train_pairs(probe_set["train"]), rewrites=True)
    probe_cfg = ProbeConfig(beta=cfg.beta, lr=PROBE_LR, progress=False)
    moves = first_order_moves(
        lm, m.objective, probe_set["eval"], d.direction, d.head, d.head_direction, probe_cfg
    )
    margin = moves[0::2] - moves[1::2]
    groups = np.array([p.group for p in probe_set["eval"]])
    by_group = {g: float(margin[groups == g].mean()) for g in dict.fromkeys(groups)}
    return {
        "moves": by_group,
        "paraphrase_over_original": by_group["paraphrase"] / by_group["same"],
        "fraction_paraphrase_right": float(np.mean(margin[groups == "paraphrase"] > 0)),
    }


@dataclass
class MitigationResult:
    name: str
    prediction: dict
    summary: dict  # the training summary (lm_probes.rm.trainer.TrainResult.summary)
    training: object = None  # the TrainResult, when trained in this process (None when read back)


def run_mitigation(
    lm_factory,
    m: Mitigation,
    data: dict,
    probe_set: dict,
    train_cfg: TrainConfig,
    ckpt: Path | None,
    resume: bool,
    runtime=None,
) -> MitigationResult:
    """Prediction (on a fresh LM) and training (on another) of one mitigation. ``runtime``
    (lm_probes.distributed): training is shared over the processes; the one-step prediction, one
    gradient step on a few pairs, is computed by each (the same numbers)."""
    t0 = time.perf_counter()
    prediction = one_step_prediction(lm_factory(), m, probe_set, train_cfg)
    prediction["seconds"] = time.perf_counter() - t0
    cfg = m.config(train_cfg)
    res = train_reward_model(
        lm_factory(), m.train_pairs(data["train"]), data["eval"], cfg, ckpt, resume, runtime=runtime
    )
    return MitigationResult(m.name, prediction, res.summary, res)


def write_mitigation(r: MitigationResult, out: Path) -> None:
    """<out>/prediction.json and the training outputs; the checkpoint, no longer needed, removed."""
    write_training(r.training, out)
    write_json(out / "prediction.json", r.prediction)
    (out / "checkpoint.pt").unlink(missing_ok=True)


def read_mitigation(name: str, out: Path, cfg: TrainConfig) -> MitigationResult | None:
    """A finished mitigation's result read back from <out>, if it was run with ``cfg``."""
    s, p = out / "summary.json", out / "prediction.json"
    if not (s.exists() and p.exists()):
        return None
    summary = json.loads(s.read_text())
    if not same_config(summary["config"], cfg):
        return None
    return MitigationResult(name, json.loads(p.read_text()), summary)


def make_mitigation_table(results: list[MitigationResult]) -> dict:
    """{name: {original|paraphrased: {train|test: accuracy}, probe: {...}, objective, options}} and the
    rank agreement of the probe's prediction with the trained paraphrased accuracy."""
    table = {}
    for r in results:
        t = make_table({"rm": r.summary["final"]})
        m = MITIGATIONS[r.name]
        table[r.name] = {
            kind: {split: t[kind][split]["rm"] for split in ("train", "test")}
            for kind in ("original", "paraphrased")
        }
        table[r.name].update(
            probe=r.prediction,
            objective=m.objective,
            options=m.options,
            augment=m.augment,
            summary=m.summary,
            predicts=m.predicts,
            train_seconds=r.summary["train_seconds"],
        )
    return table


def probe_agreement(table: dict) -> dict:
    """Spearman rank correlation between the predicted paraphrase/original ratio and the trained
    paraphrased accuracy (mean of train and test prompts), over the mitigations."""
    names = list(table)
    pred = [table[n]["probe"]["paraphrase_over_original"] for n in names]
    acc = [np.mean([table[n]["paraphrased"][s] for s in ("train", "test")]) for n in names]
    rho = float(spearmanr(pred, acc)[0]) if len(names) > 2 and np.std(pred) > 0 and np.std(acc) > 0 else None
    return {"spearman": rho, "n": len(names)}


def table_markdown(table: dict, agreement: dict, header: str) -> str:
    lines = [
        header,
        "",
        "| mitigation | reward | original train | original test | paraphrased train | paraphrased test "
        "| predicted paraphrase / original (one step) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, t in table.items():
        o, p = t["original"], t["paraphrased"]
        lines.append(
            f"| {name} | {t['objective']} | {o['train']:.3f} | {o['test']:.3f} | {p['train']:.3f} | "
            f"{p['test']:.3f} | {t['probe']['paraphrase_over_original']:+.3f} |"
        )
    rho = agreement["spearman"]
    lines += [
        "",
        f"Rank agreement of the one-step prediction with the trained paraphrased accuracy "
        f"(Spearman over {agreement['n']} mitigations): {'n/a' if rho is None else f'{rho:+.3f}'}.",
    ]
    return "\n".join(lines) + "\n"


def figure(table: dict):
    """Left: paraphrased against original accuracy; right: predicted one-step paraphrase/original ratio
    against trained paraphrased accuracy (mean of train and test prompts)."""
    plt = pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(13, 4.8))
    at = {}  # left panel: rounded point → the names there (one label for coinciding points)
    for i, (name, t) in enumerate(table.items()):
        orig = np.mean([t["original"][s] for s in ("train", "test")])
        para = np.mean([t["paraphrased"][s] for s in ("train", "test")])
        ratio = t["probe"]["paraphrase_over_original"]
        style = dict(color=f"C{i % 10}", marker="os^Dv"[i // 10 % 5])
        ax[0].scatter([orig], [para], **style)
        ax[1].scatter([ratio], [para], label=name, **style)
        at.setdefault((round(orig, 3), round(para, 3)), []).append(name)
    for (x, y), names in at.items():
        ax[0].annotate(", ".join(names), (x, y), fontsize=7, xytext=(0, 6), textcoords="offset points",
                       ha="center", wrap=True)  # fmt: skip
    ax[0].set_ylim(-0.1, 1.15)
    ax[1].set_ylim(-0.1, 1.15)
    ax[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    ax[0].set(
        xlabel="original accuracy (train/test mean)",
        ylabel="paraphrased accuracy (train/test mean)",
        title="trained: does the mitigation keep paraphrases right?",
    )
    ax[1].axvline(0, color="0.7", lw=0.8)
    ax[1].set(
        xlabel="predicted one-step move: paraphrase / original",
        ylabel="trained paraphrased accuracy",
        title="does the one-step probe rank the mitigations?",
    )
    fig.tight_layout()
    return fig


def main(argv=None, lm_factory=None) -> dict:
    ap = flags.parser("rmgap mitigations", __doc__)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument(
        "--mitigations", default=",".join(MITIGATIONS), help=f"comma list of: {', '.join(MITIGATIONS)}"
    )
    ap.add_argument("--persona-file", type=Path, help="a Persona file (default: the shipped subset)")
    ap.add_argument("--epochs", type=int, help="override the preset")
    ap.add_argument("--n-train", type=int, default=80)
    ap.add_argument("--n-test", type=int, default=40)
    ap.add_argument(
        "--probe-statements", type=int, help="evaluation statements of the probe set (preset: 20)"
    )
    ap.add_argument("--resume", action="store_true", help="skip finished mitigations, continue a stopped one")
    ap.add_argument(
        "--seeds",
        help="comma list of training seeds (data order and head; the split stays --seed's): each under "
        "<out>/seed<k>/, then table_seeds.json / table_seeds.md with CIs over seeds and statements",
    )
    flags.add_model_args(ap)
    flags.add_run_args(ap, "runs/mitigations")
    args = ap.parse_args(argv)
    names = flags.parse_list(args.mitigations, tuple(MITIGATIONS), "--mitigations")
    preset = PRESETS[args.preset]
    train_opts = {**preset["train"], **flags.preset_overrides(args)}
    base = flags.train_config(args, **train_opts)
    data = persona_data(args.persona_file, n_train=args.n_train, n_test=args.n_test, seed=args.seed)
    probe_set = persona_probe_set(
        args.persona_file,
        n_eval_statements=args.probe_statements or preset["probe_statements"],
        seed=args.seed,
    )
    runtime, factory = flags.model_factory(args, lm_factory)
    if not args.seeds:
        return run_seed(args, argv, names, base, data, probe_set, runtime, factory, args.out)
    seeds = flags.parse_seeds(args.seeds)
    for k in seeds:
        run_seed(
            args, argv, names, replace(base, seed=k), data, probe_set, runtime, factory, args.out / f"seed{k}"
        )
    if not runtime.is_main:
        return {}
    from rmgap.experiments.mitigations_seeds import write_seeds

    cfgs = {k: {n: MITIGATIONS[n].config(replace(base, seed=k)) for n in names} for k in seeds}
    return write_seeds(args.out, names, seeds, cfgs, data, flags.command_line("rmgap mitigations", argv))


def run_seed(args, argv, names, base, data, probe_set, runtime, factory, out: Path) -> dict:
    """Every mitigation with the training settings ``base`` (its seed: data order and head) → the
    table, written to ``out``; a finished mitigation is read back (--resume)."""
    cfgs = {n: MITIGATIONS[n].config(base) for n in names}
    for cfg in cfgs.values():  # (before any training: what a sharded back end cannot run)
        cfg.check(sharded=runtime.lockstep)
    train_opts = {**PRESETS[args.preset]["train"], **flags.preset_overrides(args)}
    t0, results = time.perf_counter(), []
    for name in names:
        m = MITIGATIONS[name]
        done = read_mitigation(name, out / name, cfgs[name]) if args.resume else None
        if done is None:
            done = run_mitigation(factory, m, data, probe_set, base, out / name, args.resume, runtime)
            if runtime.is_main:
                write_mitigation(done, out / name)
            runtime.barrier()
        results.append(done)
        if not runtime.is_main:
            continue
        s = done.summary["final"]
        print(
            f"{name}: paraphrased {current_names(s['paraphrased_train'])[ACCURACY]:.3f} / "
            f"{current_names(s['paraphrased_test'])[ACCURACY]:.3f}, predicted paraphrase/original "
            f"{done.prediction['paraphrase_over_original']:+.3f}",
            flush=True,
        )
    if not runtime.is_main:
        return {}  # the main process tabulates and writes
    table = make_mitigation_table(results)
    agreement = probe_agreement(table)
    cmd = flags.command_line("rmgap mitigations", argv)
    model = results[0].summary["model"].get("model")
    source = args.persona_file.name if args.persona_file else "persona/agreeableness"
    header = (
        f"Mitigations on Persona ({source}), "
        f"{model}, preset {args.preset} ({train_opts}), seed {base.seed} (split {args.seed}); "
        "accuracy with ties as ½; "
        f"one-step prediction on {len(probe_set['eval'])} probe pairs. Command: `{cmd}`"
    )
    result = {
        "mitigations": table,
        "probe_agreement": agreement,
        "preset": args.preset,
        "config": train_opts,
        "model": results[0].summary["model"],
        "command": cmd,
        "seconds": time.perf_counter() - t0,
        "markdown": table_markdown(table, agreement, header),
    }
    write_mitigations(result, out)
    print("\n" + result["markdown"])
    return result


def write_mitigations(result: dict, out: Path) -> None:
    """table.json, table.md and mitigations.png (each mitigation's own files are written as it ends)."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "table.json", {k: v for k, v in result.items() if k != "markdown"})
    write_text(out / "table.md", result["markdown"])
    save_figure(figure(result["mitigations"]), out / "mitigations.png")


if __name__ == "__main__":
    main()
