"""Did a change slow training down? One epoch of an objective on the Persona training pairs
(SmolLM2-135M-Instruct, CPU fp32, the settings of benchmarks/train.py), timed alternately with the
code of another git revision and with this checkout, in fresh processes, several rounds.

    python benchmarks/train_ab.py --rev c2937a0              # ex_rm, 2 rounds
    python benchmarks/train_ab.py --rev HEAD~3 --objective im_rm --rounds 3

The other revision is checked out into a temporary git worktree. Revisions before the data shipped
with the package (issue 9) read the Persona file from RMGAP_DATA: set it to a folder holding
persona/agreeableness.jsonl. Prints train_seconds and the final training loss per run: equal losses
say the two codes computed the same thing, the seconds compare their speed on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
try:  # the layout since issue 21
    from lm_probes.data.persona import persona_data
    from lm_probes.lm.loading import load_lm
    from lm_probes.rm.config import TrainConfig
    from lm_probes.rm.trainer import train_reward_model
except ImportError:  # revisions before issue 21 (flat lm_probes/)
    from lm_probes.loading import load_lm
    from lm_probes.train import TrainConfig, train_reward_model
    try:
        from lm_probes.persona import persona_data
    except ImportError:  # revisions before issue 9
        from lm_probes.persona_experiment import persona_data
d = persona_data(n_train=80, n_test=40, pairs_per_statement=2)
cfg = TrainConfig(objective=sys.argv[2], epochs=1, lr=1e-6, batch_size=16, micro_batch=8, progress=False)
s = train_reward_model(load_lm("smollm2"), d["train"], {"t": d["train"][:8]}, cfg)
s = getattr(s, "summary", s)
print(json.dumps({"train_seconds": s["train_seconds"], "loss": s["history"][-1]["train_loss"]}))
"""


def run(repo: Path, objective: str) -> dict:
    p = subprocess.run(
        [sys.executable, "-c", CHILD, str(repo), objective],
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
    )
    if p.returncode:
        raise RuntimeError(f"{repo}: {p.stderr.strip().splitlines()[-1]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rev", required=True, help="the other git revision")
    ap.add_argument("--objective", default="ex_rm")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    out: dict = {"other": [], "this": []}
    with tempfile.TemporaryDirectory() as tmp:
        other = Path(tmp) / "other"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(other), args.rev], check=True
        )
        try:
            for rnd in range(args.rounds):
                for name, repo in (("other", other), ("this", ROOT)):
                    r = run(repo, args.objective)
                    out[name].append(r)
                    print(
                        f"round {rnd} {name:>5} ({args.rev if name == 'other' else 'checkout'}): "
                        f"{r['train_seconds']:.1f} s, loss {r['loss']:.10f}",
                        flush=True,
                    )
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(other)], check=False)
    return out


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
