"""``rmgap transform``: shift preference pairs to other tokens with the same meaning, offline
(lm_probes.data.transforms), and measure how far the tokens moved (the dose).

    rmgap transform --list
    rmgap transform --set rewardmath/test --transform latex_macros:0.5 --seed 0 --out runs/rm_latex.jsonl
    rmgap transform --data my.jsonl --transform contractions --out runs/my_contractions.jsonl

Writes FILE (prompt, chosen, rejected, orig_chosen, orig_rejected: the shipped rewrites' schema) and
FILE.report.json: the counts (rows changed, responses refused by the meaning check, sites), and the
surface change of the responses under --tokenizer's tokens (lm_probes.data.rewrites.rewrite_quality:
token overlap with the originals, chrF, length ratios).
"""

from __future__ import annotations

from pathlib import Path

from lm_probes.common import write_json, write_jsonl
from lm_probes.data.formats import read_pairs
from lm_probes.data.transforms import TRANSFORMS, get_transform, transform_pairs
from rmgap import flags


def parse_spec(spec: str) -> tuple[str, float]:
    """ "NAME[:STRENGTH]" → (NAME, strength; 1 when not given)."""
    name, sep, value = spec.partition(":")
    try:
        strength = float(value) if sep else 1.0
    except ValueError:
        raise ValueError(f"--transform {spec!r}: the strength after ':' must be a number in [0, 1]") from None
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"--transform {spec!r}: the strength must be in [0, 1]")
    return get_transform(name).name, strength


def main(argv=None) -> dict:
    ap = flags.parser("rmgap transform", __doc__)
    ap.add_argument("--list", action="store_true", help="name the registered transformations and exit")
    ap.add_argument("--data", type=Path, help="JSONL, Parquet or a datasets folder (lm_probes.data.formats)")
    ap.add_argument("--set", help="a shipped dataset as <name>/<split>, instead of --data")
    ap.add_argument("--transform", metavar="NAME[:STRENGTH]", help="a registered transformation")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokenizer", default="smollm2", help="whose tokens measure the dose (default smollm2)")
    ap.add_argument("--out", type=Path, help="the shifted pairs (JSONL)")
    ap.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = ap.parse_args(argv)
    if args.list:
        for t in TRANSFORMS.values():
            print(f"{t.name:<20} {','.join(t.kinds):<20} {t.summary}")
        return {"transforms": list(TRANSFORMS)}
    if (args.data is None) == (args.set is None) or not args.transform or not args.out:
        ap.error("give --transform, --out and exactly one of --data FILE or --set NAME/SPLIT")
    name, strength = parse_spec(args.transform)
    pairs = read_pairs(args.data) if args.data else flags.shipped_pairs(args.set, "data")
    rows, counts = transform_pairs(pairs, get_transform(name), strength, args.seed)
    report = {"transform": name, "strength": strength, "seed": args.seed, "counts": counts}
    report["fraction_rows_changed"] = counts["rows_changed"] / counts["rows"] if counts["rows"] else 0.0
    report["source"] = str(args.data or args.set)
    if len(rows) >= 1:  # (rewrite_quality needs ≥ 2 responses: one pair has two)
        from lm_probes.data.rewrites import rewrite_quality
        from lm_probes.lm.loading import load_tokenizer

        tok = load_tokenizer(args.tokenizer)
        originals = [r[k] for r in rows for k in ("orig_chosen", "orig_rejected")]
        shifted = [r[k] for r in rows for k in ("chosen", "rejected")]
        report["quality"] = rewrite_quality(
            originals, shifted, lambda text: tok(text, add_special_tokens=False)["input_ids"]
        )
    report["command"] = flags.command_line("rmgap transform", argv)
    write_jsonl(args.out, rows)
    write_json(Path(f"{args.out}.report.json"), report)
    c, q = counts, report.get("quality", {})
    print(
        f"{name}:{strength:g} on {c['rows']} pairs: {c['rows_changed']} changed, "
        f"{c['responses_refused']} responses refused by the meaning check, "
        f"{c['sites_changed']} of {c['sites']} sites rewritten; "
        f"token overlap {q.get('token_overlap', 1):.3f}, "
        f"chrF {q.get('chrf', 100):.1f}, length ratio {q.get('length_ratio_tokens', 1):.3f}"
    )
    print(f"wrote {args.out} and {args.out}.report.json")
    return report
