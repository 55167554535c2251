"""``rmgap eval``: score language models you already have as implicit reward models, with no training
(lm_probes.rm.existing), per example, with TRL's metric names and bootstrap CIs.

    rmgap eval --model POLICY --ref REFERENCE --reward im_rm --set ultrafeedback/test --out runs/ev
    rmgap eval --model POLICY --reward im_rm_no_ref --data mine=my_pairs.jsonl --out runs/ev
    rmgap eval --model POLICY --ref REF --set rewardmath/test --transform latex_macros:1 --out runs/ev
    accelerate launch --num_processes 2 -m rmgap eval --model POLICY --ref REF --set ... --out runs/ev

β defaults to 1: RewardBench's DPO scores sum the log-ratios with no β (DPO itself trains with
β ≈ 0.1; give --beta to report on that scale; accuracies do not depend on it). Each --transform adds,
for every set, the set under that transformation (``<set>__<name>_<strength>``, lm_probes.data.transforms,
--seed). Outputs in --out: ``rewards_<set>.jsonl.gz`` (where, reward_chosen, reward_rejected),
``results.json`` (per set: rewards/accuracies, strict as TRL and RewardBench count; rmgap/accuracy_half_ties;
rmgap/tie_rate; the margins; 95 % CIs over pairs) and ``rewardbench_results.json`` (RewardBench's
layout: the model, the reference, and per set its strict accuracy). ``--compare A B`` compares two
such folders pair by pair, with the CI and winner rule of ``rmgap shifts`` (rmgap.commands.eval_compare).
"""

from __future__ import annotations

from pathlib import Path

from lm_probes.common import write_json, write_output_jsonl
from lm_probes.rm.rewards import REWARDS
from rmgap import flags

# (rewards_*.jsonl: what eval wrote before its per-row outputs were compressed)
OUTPUTS = ("rewards_*.jsonl.gz", "rewards_*.jsonl", "results.json", "rewardbench_results.json")


def _parser():
    ap = flags.parser("rmgap eval", __doc__)
    src = ap.add_argument_group("data")
    src.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="[NAME=]FILE",
        help="JSONL, Parquet or a datasets folder (lm_probes.data.formats); repeatable",
    )
    src.add_argument("--set", action="append", default=[], metavar="[NAME=]name/split", help="repeatable")
    src.add_argument("--transform", action="append", default=[], metavar="NAME:STRENGTH", help="repeatable")
    ap.add_argument("--ref", help="the reference model (hub id, local path or 'smollm2')")
    kinds = ["ex_rm", *(n for n, t in REWARDS.items() if not t.uses_head)]
    ap.add_argument("--reward", default="im_rm", choices=kinds, help="ex_rm: a sequence classifier")
    ap.add_argument(
        "--beta", type=float, help="β of the implicit reward (default: an rmgap export's own β, else 1)"
    )
    tpl = ap.add_mutually_exclusive_group()
    tpl.add_argument("--no-chat-template", action="store_true", help="prompts as raw text")
    tpl.add_argument(
        "--chat-template", type=Path, metavar="FILE", help="a Jinja chat template instead of the tokenizer's"
    )
    ap.add_argument(
        "--compare",
        nargs=2,
        metavar=("A", "B"),
        help="instead of scoring: two finished eval folders, pair by pair (rmgap.commands.eval_compare)",
    )
    flags.add_model_args(ap)
    flags.add_run_args(ap, None)
    flags.add_folder_args(ap, resume=False)
    return ap


def _sets(args) -> dict:
    """The named sets the flags give, then each under every --transform."""
    from lm_probes.data.transforms import get_transform, transformed_pairs
    from rmgap.commands.transform import parse_spec

    sets = flags.named_sets(args.data, args.set, ("--data", "--set"))
    for spec in args.transform:
        t, strength = parse_spec(spec)
        for name, pairs in list(sets.items()):
            if "__" not in name:
                sets[f"{name}__{t}_{strength:g}"] = transformed_pairs(
                    pairs, get_transform(t), strength, args.seed
                )[0]
    return sets


# results.json's plain names for the metrics (lm_probes.rm.evaluation.METRICS names them as TRL does)
RESULT_KEYS = {
    "accuracy_strict": "rewards/accuracies",
    "accuracy_ties_half": "rmgap/accuracy_half_ties",
    "tie_rate": "rmgap/tie_rate",
    "normalized_abs_margin": "rmgap/normalized_abs_margin",
}


def _settings(args, ref_lm) -> dict:
    """β and the reference: the flags', else an rmgap export's metadata (lm_probes.rm.export), else
    β = 1 and none; and where each came from."""
    from lm_probes.rm.export import read_export

    meta = read_export(args.model) if args.model != "smollm2" else None
    if meta and meta["reward"] != args.reward:
        raise ValueError(f"--model {args.model}: exported as {meta['reward']}, not --reward {args.reward}")
    meta = meta or {}
    beta, ref, from_export = args.beta, args.ref, []
    if beta is None and meta.get("beta") is not None:
        beta = meta["beta"]
        from_export.append("beta")
    if ref is None and ref_lm is None and REWARDS[args.reward].uses_reference and meta.get("reference"):
        ref = meta["reference"]["model"]
        from_export.append("ref")
    return {"beta": 1.0 if beta is None else beta, "ref": ref, "from_export": from_export}


def _load(args, ref_lm, ref, runtime):
    """(the model, the reference or None): a sequence classifier for --reward ex_rm; on this process's
    device under accelerate launch."""
    from lm_probes.lm.loading import load_classifier, load_lm

    device = args.device if runtime.device is None else str(runtime.device)
    kw = dict(device=device, dtype=args.dtype, attention=args.attention, quiet=args.quiet)
    lm = load_classifier(args.model, **kw) if args.reward == "ex_rm" else flags.load_model(args, runtime)
    if REWARDS[args.reward].uses_reference and ref_lm is None:
        ref_lm = load_lm(ref, **kw)
    return lm, ref_lm


def _template(args) -> str | None:
    """--chat-template FILE's text (read before anything loads), or None."""
    if args.chat_template is None:
        return None
    try:
        return args.chat_template.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"--chat-template {args.chat_template}: cannot be read ({exc})") from None


def _set_template(args, text, lm, ref_lm) -> str | None:
    """--chat-template's text set on both tokenizers → what renders the prompts: "tokenizer", the file
    (with its SHA-256), or None (raw text)."""
    import hashlib

    if text is None:
        has = getattr(lm.tokenizer, "chat_template", None)
        return None if args.no_chat_template or not has else "tokenizer"
    for m in (lm, ref_lm):
        if m is not None:
            m.tokenizer.chat_template = text
    return f"{args.chat_template} (sha256 {hashlib.sha256(text.encode()).hexdigest()[:16]})"


def _set_results(m: dict) -> dict:
    """One set's entry of results.json: the plain names, their CIs, then every metric by its own name."""
    out = {k: m[name] for k, name in RESULT_KEYS.items()}
    out["accuracy_ci95"] = m["ci95"]["rewards/accuracies"]
    out["accuracy_ties_half_ci95"] = m["ci95"]["rmgap/accuracy_half_ties"]
    return {
        **out,
        "n": m["n"],
        "dropped": m["dropped"],
        "boundary_merged": m["boundary_merged"],
        "metrics": m,
    }


def main(argv=None, lm=None, ref_lm=None) -> dict:
    """Score --model as the --reward reward model on every set and write the outputs."""
    from lm_probes.rm.existing import check_request, score_existing

    ap = _parser()
    args = ap.parse_args(argv)
    if args.compare:
        if args.data or args.set or args.transform or args.out is None:
            ap.error("--compare A B takes two finished eval folders and --out, and no data")
        from rmgap.commands.eval_compare import compare

        return compare(args, argv)
    if not (args.data or args.set) or args.out is None:
        ap.error("give --out and at least one --data FILE or --set NAME/SPLIT")
    sets = _sets(args)
    if args.reward == "ex_rm" and args.model == "smollm2" and lm is None:
        raise ValueError(
            "--reward ex_rm: smollm2 is a language model; give --model a sequence classifier "
            "(an EX-RM from rmgap train --export, or any AutoModelForSequenceClassification)"
        )
    run = _settings(args, ref_lm)
    check_request(
        args.reward, ref_given=run["ref"] is not None or ref_lm is not None, classifier=args.reward == "ex_rm"
    )
    template = _template(args)
    runtime = flags.runtime_from(args)
    if runtime.lockstep:
        raise ValueError(
            "rmgap eval shares the pairs out over processes that each hold the whole model; "
            "launch it with DDP (accelerate_configs/ddp.yaml), not FSDP"
        )
    flags.claim_out(args, OUTPUTS)
    if lm is None:
        lm, ref_lm = _load(args, ref_lm, run["ref"], runtime)
    run["chat_template"] = _set_template(args, template, lm, ref_lm)
    res = score_existing(
        lm,
        ref_lm,
        sets,
        reward=args.reward,
        beta=run["beta"],
        chat_template=not args.no_chat_template,
        runtime=runtime,
    )
    if not runtime.is_main:
        return {}
    for name, r in res.items():
        rows = (
            {"where": p.where, "reward_chosen": float(c), "reward_rejected": float(j)}
            for p, (c, j) in zip(r["kept"], r["rewards"], strict=True)
        )
        write_output_jsonl(Path(args.out) / f"rewards_{name}.jsonl.gz", rows)
    command = flags.command_line("rmgap eval", argv)
    info = ("model", "file_sha256", "revision", "dtype", "n_parameters")
    results = {
        "command": command,
        "model": args.model,
        "ref": run["ref"],
        "reward": args.reward,
        "beta": None if args.reward == "ex_rm" else run["beta"],
        "from_export": run["from_export"],  # (settings read from the model's rmgap_export.json)
        "model_info": {k: lm.info.get(k) for k in info},
        "ref_info": None if ref_lm is None else {k: ref_lm.info.get(k) for k in info},
        "chat_template": run["chat_template"],
        "processes": runtime.world,
        "sets": {name: _set_results(r["metrics"]) for name, r in res.items()},
    }
    write_json(Path(args.out) / "rewardbench_results.json", _rewardbench(args, run, command, res))
    write_json(Path(args.out) / "results.json", results)  # last: what marks the folder finished
    for name, r in res.items():
        m = r["metrics"]
        lo, hi = m["ci95"]["rewards/accuracies"]
        print(
            f"{name}: accuracy {m['rewards/accuracies']:.3f} [{lo:.3f}, {hi:.3f}] (strict), "
            f"ties ½ {m['rmgap/accuracy_half_ties']:.3f}, tie rate {m['rmgap/tie_rate']:.3f}, n {m['n']}"
        )
    print(f"wrote {args.out}/results.json")
    return results


def _rewardbench(args, run, command, res) -> dict:
    """RewardBench's results layout: the model, its reference, its type, per subset the accuracy."""
    kind = "Seq. Classifier" if args.reward == "ex_rm" else "DPO"
    if not REWARDS[args.reward].uses_reference and args.reward != "ex_rm":
        kind = "DPO Ref. Free"
    return {
        "model": args.model,
        "ref_model": run["ref"],
        "model_type": kind,
        "chat_template": run["chat_template"],
        "command": command,
        **{name: r["metrics"]["rewards/accuracies"] for name, r in res.items()},
    }
