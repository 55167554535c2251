"""The states and logits of scored responses, for the fixed-state dynamics of theory/README.md §3.

    states = extract_states(model, [enc, ...], pad_id)  # per response: token ids, predicting states, logits
    sc = stack_states(states)                           # the Scored view of them (float64)
    check_head(model, hidden, logits)                   # refuses models whose logits are not W·h

Everything is computed through lm_probes.lm.scoring.score, the one scoring path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lm_probes.lm.encoding import Encoded
from lm_probes.lm.scoring import HeadMismatchError, Scored, pad_batch, score
from theory import TokenStates


def forward(model, encs: list[Encoded], pad_id: int):
    """One whole-sequence forward pass → (logits (B, T, V), last-layer hidden states (B, T, D))."""
    device = next(model.parameters()).device
    ids, mask = pad_batch(encs, pad_id, device)
    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    return out.logits, out.hidden_states[-1]


@dataclass(frozen=True)
class ResponseStates:
    """What the dynamics engine needs from one scored response (numpy; logits keep the model's dtype)."""

    states: TokenStates  # tokens (K,), hidden (K, D) predicting states, logits (K, V)
    last_hidden: np.ndarray  # (D,)
    mean_hidden: np.ndarray  # (D,) mean of the states at the response's tokens
    logprob: float


def stack_states(states: list[ResponseStates], dtype=torch.float64) -> Scored:
    """The :class:`Scored` view of extracted states (float64 by default), so that a reward type's
    ``reward`` can be evaluated on them without another model pass."""
    return Scored(
        torch.tensor([s.logprob for s in states], dtype=dtype),
        torch.as_tensor(np.stack([s.last_hidden for s in states]), dtype=dtype),
        torch.as_tensor(np.stack([s.mean_hidden for s in states]), dtype=dtype),
        torch.tensor([s.states.n_tokens for s in states]),
    )


def check_head(
    model, hidden: torch.Tensor, logits: torch.Tensor, *, rtol: float | None = None, precomputed: bool = False
) -> float:
    """Relative max error of output_head(hidden) vs the model's logits; raises HeadMismatchError when
    the model post-processes its logits (soft-capping, scaling, a bias): the fixed-state formula of
    theory/README.md §3 assumes logits = W h."""
    head = model.get_output_embeddings()
    with torch.no_grad():
        mine = hidden if precomputed else head(hidden)  # precomputed: ``hidden`` is already head(h)
    err = float((mine - logits).abs().max() / logits.abs().max().clamp_min(1e-30))
    tol = rtol if rtol is not None else {torch.float64: 1e-10, torch.float32: 1e-4}.get(logits.dtype, 2e-2)
    if err > tol:
        cfg = getattr(model, "config", None)
        hints = [
            f"{k}={getattr(cfg, k)}"
            for k in ("final_logit_softcapping", "logit_scale", "logits_scaling")
            if getattr(cfg, k, None) not in (None, 1, 1.0)
        ]
        if getattr(head, "bias", None) is not None:
            hints.append("the output head has a bias")
        raise HeadMismatchError(
            f"output head applied to the last hidden states differs from the model's logits by {err:.2e} "
            f"(relative){' — ' + ', '.join(hints) if hints else ''}; logits are not W·h here, so the "
            "fixed-state dynamics of theory.dynamics do not apply to this model"
        )
    return err


@torch.no_grad()
def extract_states(
    model, encs: list[Encoded], pad_id: int, *, verify_head: bool = True
) -> list[ResponseStates]:
    """Per response: token ids, the states predicting them, their logits, last and mean state, ln π.
    With ``verify_head`` (once per call) the output head applied to these states is compared with the
    full model's own logits, which refuses models whose logits are not W·h."""
    sc = score(model, encs, pad_id, keep_states=True)
    if verify_head:
        few = encs[:4]
        logits, _ = forward(model, few, pad_id)
        head = model.get_output_embeddings()
        mine = torch.cat([head(h) for h in sc.pred_hidden[: len(few)]])
        theirs = torch.cat([logits[i, e.prompt_len - 1 : len(e.input_ids) - 1] for i, e in enumerate(few)])
        check_head(model, mine, theirs, precomputed=True)
    out = []
    for i, e in enumerate(encs):
        logits = sc.pred_logits[i]
        logits = logits.float() if logits.dtype == torch.bfloat16 else logits
        states = TokenStates(
            np.array(e.response_ids), sc.pred_hidden[i].double().cpu().numpy(), logits.cpu().numpy()
        )
        out.append(
            ResponseStates(
                states,
                sc.last_hidden[i].double().cpu().numpy(),
                sc.mean_hidden[i].double().cpu().numpy(),
                float(sc.logprob[i]),
            )
        )
    return out
