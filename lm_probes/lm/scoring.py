"""The one scoring path for (prompt, response) pairs on a causal LM, used by probes and training.

    enc = encode(tokenizer, prompt, response)          # lm_probes.lm.encoding
    sc = score(model, [enc, ...], pad_id)              # ln π(y|x), last/mean states; differentiable
    (lm_probes.lm.states.extract_states: per response token its id, predicting state and logits)

Positions follow lm_probes.lm.encoding: the state that predicts response token y_k sits at P − 1 + (k − 1)
after a prompt of P tokens; the EX-RM reads the state at the last response token, P + K − 1.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from lm_probes.lm.encoding import Encoded


class HeadMismatchError(RuntimeError):
    """The output head applied to the extracted states does not reproduce the model's logits."""


def pad_batch(encs: list[Encoded], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, T) input ids and attention mask of whole sequences."""
    T = max(len(e.input_ids) for e in encs)
    ids = torch.full((len(encs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encs), T), dtype=torch.long)
    for i, e in enumerate(encs):
        ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
        mask[i, : len(e.input_ids)] = 1
    return ids.to(device), mask.to(device)


@dataclass
class Scored:
    """Torch outputs of :func:`score`, in the order of the encodings (differentiable)."""

    logprob: torch.Tensor | None  # (N,) Σ_k ln π(y_k | x, y_<k); None when scored without logits
    last_hidden: torch.Tensor  # (N, D) state at the last response token (what an EX-RM reads)
    mean_hidden: torch.Tensor  # (N, D) mean state over the response tokens
    n_tokens: torch.Tensor  # (N,) response lengths K_i
    pred_hidden: list | None = None  # N × (K_i, D) states predicting each response token
    pred_logits: list | None = None  # N × (K_i, V) their logits
    token_logprob: list | None = None  # N × (K_i,) ln π(y_k | x, y_<k); None without logits
    # (N, A) ln π(a | x) of the candidate first tokens ``answer_ids`` (e.g. Yes / No), when asked for
    answer_logprob: torch.Tensor | None = None


def head_is_linear(model) -> bool:
    """Are the model's logits exactly output_head(last hidden state)? Checked once per model (cached on
    it). When they are, scoring runs the base model and applies the head only where logits are needed
    (response positions; none for EX-RMs); when not (soft-capping, scaling, a bias), it runs the full
    model so training still sees the true logits, and the probes' head check refuses the model."""
    cached = model.__dict__.get("_rmgap_head_is_linear")
    if cached is not None:
        return cached
    ok = False
    head, decoder = model.get_output_embeddings(), getattr(model, "get_decoder", lambda: None)()
    if head is not None and decoder is not None:
        dev = next(model.parameters()).device
        ids = (torch.arange(8, device=dev) * 7 % head.weight.shape[0])[None]
        with torch.no_grad():
            out = model(input_ids=ids, output_hidden_states=True)
            base = decoder(input_ids=ids).last_hidden_state
            mine = head(base)
        tol = {torch.float64: 1e-10, torch.float32: 1e-4}.get(out.logits.dtype, 2e-2)
        err = float((mine - out.logits).abs().max() / out.logits.abs().max().clamp_min(1e-30))
        ok = err <= tol and torch.allclose(base, out.hidden_states[-1], rtol=tol, atol=tol)
    model.__dict__["_rmgap_head_is_linear"] = ok
    return ok


def _pass(model, fast: bool, cache=None, **kw):
    """One pass (continuing the KV ``cache`` where given) → (last-layer states (B, T, D), logits
    (B, T, V) or None when ``fast``, KV cache). The cache is passed and read under the name this
    transformers uses: ``cache`` from 5.x, ``past_key_values`` before (deprecated since)."""
    if cache is not None:
        kw[_cache_name()] = cache
    if fast:
        out = model.get_decoder()(**kw)
        return out.last_hidden_state, None, _cache_of(out)
    out = model(output_hidden_states=True, **kw)
    return out.hidden_states[-1], out.logits, _cache_of(out)


@functools.cache
def _cache_name() -> str:
    import inspect

    from transformers import LlamaModel

    return "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"


def _cache_of(out):
    """The KV cache of a model output, without touching a deprecated alias."""
    return out.get(_cache_name()) if hasattr(out, "get") else getattr(out, _cache_name(), None)


def _token_logprob(lgt: torch.Tensor, response_ids, device) -> torch.Tensor:
    """(K,) ln π(y_k | ·) of the response tokens from their (K, V) logits."""
    lp = torch.log_softmax(lgt.float() if lgt.dtype == torch.bfloat16 else lgt, -1)
    return lp[torch.arange(len(response_ids), device=device), torch.tensor(response_ids, device=device)]


def prompt_groups(encs: list[Encoded], max_group: int) -> list[list[int]]:
    by_prompt: dict[tuple, list[int]] = {}
    for i, e in enumerate(encs):
        by_prompt.setdefault(e.input_ids[: e.prompt_len], []).append(i)
    return [idx[j : j + max_group] for idx in by_prompt.values() for j in range(0, len(idx), max_group)]


def score(
    model,
    encs: list[Encoded],
    pad_id: int,
    *,
    keep_states: bool = False,
    max_group: int = 16,
    mode: str = "auto",
    need_logits: bool = True,
    answer_ids: tuple[int, ...] | None = None,
) -> Scored:
    """Score responses. ``mode="cached"`` runs each distinct prompt once and expands its KV cache over
    the responses that share it, recomputing only response tokens; ``"whole"`` runs padded whole
    sequences in batches of similar length (``"single"``: in one batch, one pass of the model, as a
    fully sharded back end needs: lm_probes.distributed); ``"auto"`` caches when prompts repeat (≥ 3
    responses per prompt on average). All give the same numbers (to rounding). Logits are formed only
    at response positions, and not at all with ``need_logits=False`` (EX-RMs; ``logprob`` is then
    None), when the model's logits are its head applied to its states (``head_is_linear``).
    ``answer_ids`` adds
    ``answer_logprob``: the log-probabilities of those tokens at the position that predicts the first
    response token (the EX-GRM's P(Yes), P(No)). Differentiable; works under torch.func.jvp /
    functional_call (see ``Scorer``)."""
    if mode not in ("auto", "cached", "whole", "single"):
        raise ValueError(f"mode must be 'auto', 'cached', 'whole' or 'single', got {mode!r}")
    fast = head_is_linear(model)
    need_logits = need_logits or keep_states
    n_prompts = len({e.input_ids[: e.prompt_len] for e in encs})
    if mode == "single":  # one padded batch: one pass of the model whatever the data
        return _score_whole(model, encs, pad_id, keep_states, need_logits, fast, answer_ids)
    if mode == "whole" or (mode == "auto" and len(encs) < 3 * n_prompts):
        groups = length_groups(encs)
        parts = [
            _score_whole(model, [encs[i] for i in g], pad_id, keep_states, need_logits, fast, answer_ids)
            for g in groups
        ]
        return parts[0] if len(parts) == 1 else _merge(parts, groups)
    return _score_cached(model, encs, pad_id, keep_states, need_logits, fast, answer_ids, max_group)


MIN_FILL = 0.8  # length_groups' threshold (benchmarks/shifts.py sets 0 to time one padded batch)


def length_groups(encs: list[Encoded], min_fill: float | None = None) -> list[list[int]]:
    """Indices of ``encs`` split into padded batches that waste little: sorted by length, a batch
    closes when adding the next sequence would bring its real/padded token ratio below ``min_fill``
    (one batch when the whole set already fills that well). Training micro-batches of long, uneven
    sequences (UltraFeedback: 150 and 500 tokens in one pair) then stop spending a third of their
    FLOPs on padding (benchmarks/shifts.py); the result does not depend on the split beyond rounding."""
    min_fill = MIN_FILL if min_fill is None else min_fill
    lengths = [len(e.input_ids) for e in encs]
    if sum(lengths) >= min_fill * max(lengths) * len(encs):
        return [list(range(len(encs)))]
    groups, cur, real = [], [], 0
    for i in sorted(range(len(encs)), key=lambda i: lengths[i]):
        if cur and (real + lengths[i]) < min_fill * lengths[i] * (len(cur) + 1):
            groups.append(cur)
            cur, real = [], 0
        cur.append(i)
        real += lengths[i]
    return [*groups, cur]


def _score_cached(
    model, encs: list[Encoded], pad_id: int, keep_states, need_logits, fast, answer_ids, max_group: int
) -> Scored:
    """:func:`score`'s ``"cached"`` mode: each distinct prompt once, its KV cache expanded over the
    responses that share it, only response tokens recomputed."""
    device = next(model.parameters()).device
    head = model.get_output_embeddings()
    N = len(encs)
    logprob, last, mean, tok_lp, first = [None] * N, [None] * N, [None] * N, [None] * N, [None] * N
    pred_h, pred_l = ([None] * N, [None] * N) if keep_states else (None, None)
    for idx in prompt_groups(encs, max_group):
        P, B = encs[idx[0]].prompt_len, len(idx)
        prompt = torch.tensor([encs[idx[0]].input_ids[:P]], device=device)
        h_p, l_p, cache = _pass(model, fast, input_ids=prompt, use_cache=True)
        if B > 1:
            cache.batch_repeat_interleave(B)
        lens = [encs[i].response_len for i in idx]
        R = max(lens)
        resp = torch.full((B, R), pad_id, dtype=torch.long, device=device)
        mask = torch.zeros((B, P + R), dtype=torch.long, device=device)
        mask[:, :P] = 1
        for b, i in enumerate(idx):
            resp[b, : lens[b]] = torch.tensor(encs[i].response_ids, device=device)
            mask[b, P : P + lens[b]] = 1
        pos = (P + torch.arange(R, device=device))[None].expand(B, R)
        h_r, l_r, _ = _pass(model, fast, input_ids=resp, attention_mask=mask, cache=cache, position_ids=pos)
        h_first = h_p[0, -1]  # the state predicting y_1; response position j predicts y_{j+2}
        if answer_ids is not None:
            l_first = head(h_first) if fast else l_p[0, -1]
            a = _answer_logprob(l_first, answer_ids)
            for i in idx:
                first[i] = a
        for b, i in enumerate(idx):
            k = lens[b]
            last[i], mean[i] = h_r[b, k - 1], h_r[b, :k].mean(0)
            if not need_logits:
                continue
            hid = torch.cat([h_first[None], h_r[b, : k - 1]])  # (K, D)
            lgt = head(hid) if fast else torch.cat([l_p[0, -1][None], l_r[b, : k - 1]])  # (K, V)
            tok_lp[i] = _token_logprob(lgt, encs[i].response_ids, device)
            logprob[i] = tok_lp[i].sum()
            if keep_states:
                pred_h[i], pred_l[i] = hid, lgt
    return Scored(
        torch.stack(logprob) if need_logits else None,
        torch.stack(last),
        torch.stack(mean),
        _lengths(encs, device),
        pred_h,
        pred_l,
        tok_lp if need_logits else None,
        None if answer_ids is None else torch.stack(first),
    )


def _merge(parts: list[Scored], groups: list[list[int]]) -> Scored:
    """One Scored, in the original order, from the Scored of each group of :func:`length_groups`."""
    order = [i for g in groups for i in g]
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))

    def tensor(name):
        got = [getattr(p, name) for p in parts]
        return None if got[0] is None else torch.cat(got)[inverse.to(got[0].device)]

    def listed(name):
        got = [getattr(p, name) for p in parts]
        if got[0] is None:
            return None
        flat = [x for g in got for x in g]
        return [flat[j] for j in inverse.tolist()]

    return Scored(
        tensor("logprob"),
        tensor("last_hidden"),
        tensor("mean_hidden"),
        tensor("n_tokens"),
        listed("pred_hidden"),
        listed("pred_logits"),
        listed("token_logprob"),
        tensor("answer_logprob"),
    )


def _answer_logprob(logits: torch.Tensor, answer_ids) -> torch.Tensor:
    """(A,) ln softmax(logits)[answer_ids] of one position's (V,) logits."""
    lp = torch.log_softmax(logits.float() if logits.dtype == torch.bfloat16 else logits, -1)
    return lp[torch.tensor(answer_ids, device=logits.device)]


def _lengths(encs: list[Encoded], device) -> torch.Tensor:
    return torch.tensor([e.response_len for e in encs], device=device)


def _score_whole(
    model, encs: list[Encoded], pad_id: int, keep_states: bool, need_logits: bool, fast: bool, answer_ids=None
) -> Scored:
    device = next(model.parameters()).device
    ids, mask = pad_batch(encs, pad_id, device)
    hidden, logits, _ = _pass(model, fast, input_ids=ids, attention_mask=mask)
    head = model.get_output_embeddings()
    logprob, last, mean, pred_h, pred_l, tok_lp, first = [], [], [], [], [], [], []
    for i, e in enumerate(encs):
        P, k = e.prompt_len, e.response_len
        last.append(hidden[i, P + k - 1])
        mean.append(hidden[i, P : P + k].mean(0))
        if answer_ids is not None:
            first.append(_answer_logprob(head(hidden[i, P - 1]) if fast else logits[i, P - 1], answer_ids))
        if not need_logits:
            continue
        hid = hidden[i, P - 1 : P - 1 + k]
        lgt = head(hid) if fast else logits[i, P - 1 : P - 1 + k]
        tok_lp.append(_token_logprob(lgt, e.response_ids, device))
        logprob.append(tok_lp[-1].sum())
        pred_h.append(hid)
        pred_l.append(lgt)
    return Scored(
        torch.stack(logprob) if need_logits else None,
        torch.stack(last),
        torch.stack(mean),
        _lengths(encs, device),
        pred_h if keep_states else None,
        pred_l if keep_states else None,
        tok_lp if need_logits else None,
        torch.stack(first) if answer_ids is not None else None,
    )


class Scorer(torch.nn.Module):
    """Wraps a model so ``torch.func.functional_call(scorer, params, (encs, pad_id))`` substitutes the
    parameters in every pass of :func:`score` (params named ``model.<name>``)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, encs, pad_id, keep_states=False, need_logits=True, answer_ids=None):
        return score(
            self.model, encs, pad_id, keep_states=keep_states, need_logits=need_logits, answer_ids=answer_ids
        )
