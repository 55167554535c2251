"""What ``run_probe`` (lm_probes.probe.one_step) reports beside its columns: the per-token contribution
rows of the fixed-state prediction, and the paper's max-margin footnote check. ``run`` is the probe's
shared state (one_step._Run: the model, its encodings and states at θ0)."""

from __future__ import annotations

import numpy as np

from lm_probes.data.pairs import Pair
from lm_probes.lm.states import extract_states
from theory import max_margin_separator
from theory.max_margin import NotSeparableError


def contribution_rows(run, contributions: dict) -> list[dict]:
    """Per evaluation response: its tokens and, per type with a decomposition, C±[k, l] per triple."""
    if not any(contributions.values()):
        return []
    tok = run.lm.tokenizer
    train_tokens = [
        [tok.convert_ids_to_tokens(s.states.tokens.tolist()) for s in run.tr_states[2 * i : 2 * i + 2]]
        for i in range(run.n)
    ]
    rows = []
    for j, s in enumerate(run.ev_states):
        pair = run.evals[j // 2]
        rows.append(
            dict(
                index=j,
                group=pair.group,
                response=pair.chosen if j % 2 == 0 else pair.rejected,
                tokens=tok.convert_ids_to_tokens(s.states.tokens.tolist()),
                train_tokens=train_tokens,
                **{name: c[j] for name, c in contributions.items() if c},
            )
        )
    return rows


def max_margin_check(run, margin: list[Pair]) -> dict:
    """The paper's footnote: the fraction of evaluation pairs, per group, on the right side of the
    max-margin separator u* of the training (and margin-set) last-state differences."""
    encs = [e for pr in run.encode(margin).encodings for e in pr]
    states = extract_states(run.model, encs, run.pad, verify_head=False)
    h_tr = np.stack([s.last_hidden for s in run.tr_states])
    h_ev = np.stack([s.last_hidden for s in run.ev_states])
    X = np.stack(
        [states[2 * i].last_hidden - states[2 * i + 1].last_hidden for i in range(len(states) // 2)]
        + [h_tr[2 * i] - h_tr[2 * i + 1] for i in range(run.n)]
    )
    try:
        u_star = max_margin_separator(X).u
    except NotSeparableError as exc:
        return {"error": str(exc)}
    right = (h_ev[0::2] - h_ev[1::2]) @ u_star > 0
    groups = np.array([p.group for p in run.evals])
    return {g: float(np.mean(right[groups == g])) for g in dict.fromkeys(groups)}
