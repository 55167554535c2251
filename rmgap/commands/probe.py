"""``rmgap probe``: which responses one preference update moves, by how much, and why
(lm_probes.probe.one_step), written as a report (summary.json, records.csv, scatter.png).

    rmgap probe persona                       # SmolLM2-135M-Instruct offline, the Persona probe set
    rmgap probe persona --dtype float64 --lr 1e-4 --rewards im_rm,ex_rm,ex_rm_mean
    rmgap probe persona --lora 8,16,q_proj+v_proj     # the step on LoRA adapters alone
    rmgap probe --data my.jsonl --train-rows 1 --model HuggingFaceTB/SmolLM2-360M-Instruct
"""

from __future__ import annotations

import time
from pathlib import Path

from lm_probes.data.pairs import read_jsonl
from lm_probes.probe.one_step import OPTIMIZERS, ProbeConfig
from lm_probes.rm.rewards import REWARDS
from rmgap import flags


def _parser():
    ap = flags.parser("rmgap probe", __doc__)
    ap.add_argument("set", nargs="?", choices=["persona"], help="built-in probe set")
    ap.add_argument("--data", type=Path, help="JSONL with prompt/chosen/rejected instead of a built-in set")
    ap.add_argument("--train-rows", type=int, default=1, help="with --data: the first N rows are triples")
    ap.add_argument("--persona-file", type=Path, help="a Persona file (default: the shipped subset)")
    ap.add_argument("--n-eval-statements", type=int, default=20, help="persona: statements (× 10 responses)")
    ap.add_argument("--n-margin-statements", type=int, default=8, help="persona: statements for the u* check")
    ap.add_argument("--rewards", default="im_rm,ex_rm", help=f"comma list of: {', '.join(REWARDS)}")
    ap.add_argument("--untie-head", action="store_true", help="untie the output head for the full step too")
    ap.add_argument("--beta", type=float, default=ProbeConfig.beta)
    ap.add_argument("--lr", type=float, default=ProbeConfig.lr, help="η of the step")
    ap.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default=ProbeConfig.optimizer,
        help="the step predicted and taken: sgd (−η∇ℓ) or adam (its first step, −η·g/(|g|+ε))",
    )
    ap.add_argument("--modes", default="head_only,full", help="comma list of head_only, full")
    flags.add_lora_arg(ap)
    ap.add_argument("--no-chat-template", action="store_true")
    ap.add_argument("--batch-size", type=int, default=ProbeConfig.batch_size)
    ap.add_argument("--no-figure", action="store_true")
    flags.add_model_args(ap)
    flags.add_run_args(ap, None)
    flags.add_folder_args(ap, resume=False)
    return ap


def _probe_set(ap, args) -> tuple[dict, str]:
    """(the training triples, evaluation pairs and margin statements; the set's name)."""
    from lm_probes.data.persona import persona_probe_set

    if args.data is None:
        data = persona_probe_set(
            args.persona_file,
            n_eval_statements=args.n_eval_statements,
            n_margin_statements=args.n_margin_statements,
            seed=args.seed,
        )
        return data, "persona"
    rows = read_jsonl(args.data)
    if not 0 < args.train_rows < len(rows):
        ap.error(f"--train-rows must be between 1 and {len(rows) - 1} for {args.data} ({len(rows)} rows)")
    return {"train": rows[: args.train_rows], "eval": rows[args.train_rows :], "margin": None}, args.data.stem


def main(argv=None, lm=None) -> dict:
    """Run the reward-dynamics probe (lm_probes.probe.one_step) and write its report."""
    from lm_probes.lm.loading import float64_problem
    from lm_probes.probe.one_step import run_probe
    from lm_probes.reports import PROBE_OUTPUTS, print_probe, write_probe

    ap = _parser()
    args = ap.parse_args(argv)
    if (args.set is None) == (args.data is None):
        ap.error("give exactly one of: a built-in set (persona) or --data FILE")
    modes = flags.parse_list(args.modes, ("head_only", "full"), "--modes")
    rewards = flags.parse_list(args.rewards, tuple(REWARDS), "--rewards")
    data, name = _probe_set(ap, args)
    if args.attention != "eager":
        raise ValueError("rmgap probe: --attention sdpa has no forward-mode autodiff; the probe needs eager")
    if args.dtype == "float64" and (why := float64_problem(args.device)):
        raise ValueError(f"--dtype float64 on {args.device}: {why}; use --dtype float32 or --device cpu")
    cfg = ProbeConfig(
        beta=args.beta,
        lr=args.lr,
        chat_template=not args.no_chat_template,
        batch_size=args.batch_size,
        modes=modes,
        head_seed=args.seed if args.head_seed is None else args.head_seed,
        rewards=rewards,
        progress=not args.quiet,
        optimizer=args.optimizer,
        lora=flags.lora_text(args),
    )
    args.out = args.out or Path("runs") / f"probe-{name}"
    flags.claim_out(args, PROBE_OUTPUTS)
    t0 = time.perf_counter()
    lm = lm or flags.load_model(args, untie_head=args.untie_head)
    t_load = time.perf_counter() - t0
    res = run_probe(lm, data["train"], data["eval"], cfg, margin=data.get("margin"))
    res["summary"]["seconds"] = {"load": t_load, "probe": time.perf_counter() - t0 - t_load}
    res["summary"]["command"] = flags.command_line("rmgap probe", argv)
    write_probe(res, args.out, figure=not args.no_figure)
    print_probe(res["summary"])
    print(f"wrote {args.out}/summary.json, records.csv" + ("" if args.no_figure else ", scatter.png"))
    return res["summary"]
