"""``rmgap data [--verify]``: the datasets shipped with the package (name, split, rows, licence);
--verify recomputes every file's SHA-256 against the manifest."""

from __future__ import annotations

import os

from lm_probes.data.pairs import catalog, data_overrides, shipped_path
from rmgap.flags import parser


def main(argv=None) -> list[dict]:
    """List the shipped datasets (name, split, rows, licence); --verify recomputes every checksum."""
    ap = parser("rmgap data", __doc__)
    ap.add_argument("--verify", action="store_true", help="check every file's SHA-256 against the manifest")
    ap.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = ap.parse_args(argv)
    entries = list(catalog())
    print(f"{'name':<26} {'split':<14} {'rows':>5}  licence")
    for e in entries:
        if args.verify:
            shipped_path(e["name"], e["split"])  # raises DataError on a mismatch
        print(f"{e['name']:<26} {e['split']:<14} {e['rows']:>5}  {e['licence']}")
    if args.verify:
        print(f"all {len(entries)} shipped files match their SHA-256")
    if over := data_overrides():
        print(f"RMGAP_DATA={os.environ['RMGAP_DATA']} replaces {len(over)} of them (read unchecked):")
        for spec, path in over.items():
            print(f"  {spec:<40} {path}")
    print("details: lm_probes/data/datasets/README.md; load: lm_probes.data.pairs.load_pairs(name, split)")
    return entries
