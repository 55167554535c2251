"""The one scoring path for (prompt, response) pairs on a causal LM, used by probes and training.

    enc = encode(tokenizer, prompt, response)          # lm_probes.lm.encoding
    sc = score(model, [enc, ...], pad_id)              # ln π(y|x), last/mean states; differentiable
    (lm_probes.lm.states.extract_states: per response token its id, predicting state and logits)

Positions follow lm_probes.lm.encoding: the state that predicts response token y_k sits at P − 1 + (k − 1)
after a prompt of P tokens; the EX-RM reads the state at the last response token, P + K − 1.
Scoring runs inside lm_probes.lm.into_grad.routed: a backward that accumulates adds each use's
gradient of a weight into its existing ``.grad`` at once (the cached mode uses each weight twice).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from lm_probes.lm import into_grad
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


def _log_softmax(lgt: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(lgt.float() if lgt.dtype == torch.bfloat16 else lgt, -1)


def prompt_groups(encs: list[Encoded], max_group: int) -> list[list[int]]:
    by_prompt: dict[tuple, list[int]] = {}
    for i, e in enumerate(encs):
        by_prompt.setdefault(e.input_ids[: e.prompt_len], []).append(i)
    return [idx[j : j + max_group] for idx in by_prompt.values() for j in range(0, len(idx), max_group)]


# "auto" shares prompts when that runs this many times fewer tokens (benchmarks/shared_prompts.py)
SHARE_GAIN = 1.1


def shared_prompt_gain(encs: list[Encoded], max_group: int = 16) -> float:
    """Tokens of the whole sequences over the tokens the ``"cached"`` mode runs, its padding counted:
    Σ (P + K) / Σ over prompt groups (P + n · max K). A preference pair with prompt P and responses
    of K tokens each gives (2P + 2K) / (P + 2K): 1.8 on Persona's ~50-token prompts and short answers;
    UltraFeedback's answers of 40 and 450 tokens under a 190-token prompt give less than 1 (the
    short answer padded to the long one), where whole sequences, split by length, run faster."""
    groups = prompt_groups(encs, max_group)
    work = sum(encs[g[0]].prompt_len + len(g) * max(encs[i].response_len for i in g) for g in groups)
    return sum(len(e.input_ids) for e in encs) / work


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
    the responses that share it, recomputing only response tokens (prompts packed into padded passes
    of at most ``max_group`` responses: :func:`prompt_batches`); ``"whole"`` runs padded whole
    sequences in batches of similar length (``"single"``: in one batch, one pass of the model, as a
    fully sharded back end needs: lm_probes.distributed); ``"auto"`` caches when that runs
    ``SHARE_GAIN`` times fewer tokens (:func:`shared_prompt_gain`; a training micro-batch of pairs
    with long prompts, an evaluation of rewritten sets). All give the same numbers (to rounding), and
    gradients flow through the shared prompt. Logits are formed only at response positions, in one
    product per pass, and not at all with ``need_logits=False`` (EX-RMs; ``logprob`` is then None),
    when the model's logits are its head applied to its states (``head_is_linear``). ``answer_ids``
    adds ``answer_logprob``: the log-probabilities of those tokens at the position that predicts the
    first response token (the EX-GRM's P(Yes), P(No)). Differentiable; works under torch.func.jvp /
    functional_call (see ``Scorer``)."""
    if mode not in ("auto", "cached", "whole", "single"):
        raise ValueError(f"mode must be 'auto', 'cached', 'whole' or 'single', got {mode!r}")
    fast = head_is_linear(model)
    need_logits = need_logits or keep_states
    out = Responses(model, fast, need_logits, keep_states, answer_ids)
    if mode == "single":  # one padded batch: one pass of the model whatever the data
        groups, one_pass = [list(range(len(encs)))], _whole_pass
    elif mode == "whole" or (mode == "auto" and shared_prompt_gain(encs, max_group) < SHARE_GAIN):
        groups, one_pass = length_groups(encs), _whole_pass
    else:
        groups, one_pass = prompt_batches(encs, max_group, gap_free=_sliding_window(model)), _cached_pass
    parts = []
    with into_grad.routed(model):  # (passes share weights: lm_probes.lm.into_grad)
        for g in groups:
            sub = [encs[i] for i in g]
            parts.append(out.scored(sub, *one_pass(model, sub, pad_id, fast)))
    return parts[0] if groups == [list(range(len(encs)))] else _merge(parts, groups)


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


def prompt_batches(encs: list[Encoded], max_group: int, gap_free: bool = False) -> list[list[int]]:
    """Indices of ``encs`` packed into the passes of the ``"cached"`` mode: whole prompt groups (one
    prompt, at most ``max_group`` responses), sorted by prompt length; a pass closes before it would
    hold more than ``max_group`` responses or fill its padded prompt and response batches below
    ``MIN_FILL``. ``gap_free``: only prompts of one length share a pass (sliding-window attention
    counts a padded prompt's gap as distance)."""
    groups = sorted(prompt_groups(encs, max_group), key=lambda g: encs[g[0]].prompt_len)
    passes, cur = [], []
    for g in groups:
        trial = [*cur, g]
        P = [encs[h[0]].prompt_len for h in trial]
        K = [encs[i].response_len for h in trial for i in h]
        fill = (sum(P) + sum(K)) / (len(P) * max(P) + len(K) * max(K))
        if cur and (len(K) > max_group or fill < MIN_FILL or (gap_free and P[0] != P[-1])):
            passes.append([i for h in cur for i in h])
            trial = [g]
        cur = trial
    return [*passes, [i for h in cur for i in h]] if cur else passes


def _sliding_window(model) -> bool:
    """Does the model attend within a sliding window (by cache index, so a padding gap would count)?"""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if getattr(cfg, "sliding_window", None) is None:
        return False
    types = getattr(cfg, "layer_types", None)
    return any("sliding" in t for t in types) if types else bool(getattr(cfg, "use_sliding_window", True))


def _cached_pass(model, encs: list[Encoded], pad_id: int, fast: bool):
    """One pass of the ``"cached"`` mode: the distinct prompts of ``encs`` as one right-padded batch, its
    KV cache gathered to one row per response, then the responses (positions continuing each prompt,
    the prompt's padding masked) → what :meth:`Responses.scored` reads."""
    device = next(model.parameters()).device
    prompts: dict[tuple, int] = {}
    row = [prompts.setdefault(e.input_ids[: e.prompt_len], len(prompts)) for e in encs]
    T = max(len(q) for q in prompts)
    ids = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    pmask = torch.zeros((len(prompts), T), dtype=torch.long)
    for g, q in enumerate(prompts):
        ids[g, : len(q)], pmask[g, : len(q)] = torch.tensor(q), 1
    R = max(e.response_len for e in encs)
    resp = torch.full((len(encs), R), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encs), T + R), dtype=torch.long)
    for n, e in enumerate(encs):
        resp[n, : e.response_len] = torch.tensor(e.response_ids)
        mask[n, : e.prompt_len], mask[n, T : T + e.response_len] = 1, 1
    # One embedding lookup for both passes: its backward writes a dense (V, D) gradient per call
    # (1 GiB at Llama-3.2-1B's shapes in float32), and where .grad does not exist yet (a first
    # micro-batch, where into_grad hands gradients to autograd) two lookups held two at once.
    flat = model.get_input_embeddings()(torch.cat([ids.flatten(), resp.flatten()]).to(device))
    emb_p, emb_r = flat[: ids.numel()].unflatten(0, ids.shape), flat[ids.numel() :].unflatten(0, resp.shape)
    h_p, l_p, cache = _pass(model, fast, inputs_embeds=emb_p, attention_mask=pmask.to(device), use_cache=True)
    if row != list(range(len(prompts))):
        cache.reorder_cache(torch.tensor(row, device=device))
    pos = torch.tensor([e.prompt_len for e in encs])[:, None] + torch.arange(R)[None]
    h_r, l_r, _ = _pass(
        model,
        fast,
        inputs_embeds=emb_r,
        attention_mask=mask.to(device),
        cache=cache,
        position_ids=pos.to(device),
    )
    hid, lgt = [], []  # per response: the states (K, D) predicting it, and (not fast) their logits
    for n, e in enumerate(encs):
        g, P, k = row[n], e.prompt_len, e.response_len
        hid.append(torch.cat([h_p[g, P - 1][None], h_r[n, : k - 1]]))
        if not fast:
            lgt.append(torch.cat([l_p[g, P - 1][None], l_r[n, : k - 1]]))
    last = torch.stack([h_r[n, e.response_len - 1] for n, e in enumerate(encs)])
    mean = torch.stack([h_r[n, : e.response_len].mean(0) for n, e in enumerate(encs)])
    return hid, lgt or None, last, mean


def _whole_pass(model, encs: list[Encoded], pad_id: int, fast: bool):
    """One padded pass of whole sequences → what :meth:`Responses.scored` reads."""
    device = next(model.parameters()).device
    ids, mask = pad_batch(encs, pad_id, device)
    hidden, logits, _ = _pass(model, fast, input_ids=ids, attention_mask=mask)
    spans = [(i, e.prompt_len, e.response_len) for i, e in enumerate(encs)]
    hid = [hidden[i, P - 1 : P - 1 + k] for i, P, k in spans]
    lgt = None if fast else [logits[i, P - 1 : P - 1 + k] for i, P, k in spans]
    last = torch.stack([hidden[i, P + k - 1] for i, P, k in spans])
    mean = torch.stack([hidden[i, P : P + k].mean(0) for i, P, k in spans])
    return hid, lgt, last, mean


class Responses:
    """What :func:`score` asked for, made from one pass's per-response states ``hid`` (K_i, D) (those
    predicting each response token) and, when the head is not applied here, their logits ``lgt``:
    the head applied once to all the pass's response states, one log-softmax, one gather."""

    def __init__(self, model, fast: bool, need_logits: bool, keep_states: bool, answer_ids):
        self.head, self.fast = model.get_output_embeddings(), fast
        self.need_logits, self.keep_states, self.answer_ids = need_logits, keep_states, answer_ids

    def scored(self, encs: list[Encoded], hid, lgt, last, mean) -> Scored:
        device, sizes = last.device, [e.response_len for e in encs]
        logprob = tok_lp = pred_l = first = None
        if self.need_logits:
            allg = self.head(torch.cat(hid)) if self.fast else torch.cat(lgt)  # (Σ K_i, V)
            ids = torch.tensor([t for e in encs for t in e.response_ids], device=device)
            tok_lp = list(_log_softmax(allg)[torch.arange(len(ids), device=device), ids].split(sizes))
            logprob = torch.stack([t.sum() for t in tok_lp])
            pred_l = list(allg.split(sizes)) if self.keep_states else None
        if self.answer_ids is not None:  # at the position predicting y_1: each hid's first row
            firsts = [x[0] for x in (hid if self.fast else lgt)]
            f = self.head(torch.stack(firsts)) if self.fast else torch.stack(firsts)
            first = _log_softmax(f)[:, torch.tensor(self.answer_ids, device=device)]
        return Scored(
            logprob,
            last,
            mean,
            torch.tensor(sizes, device=device),
            hid if self.keep_states else None,
            pred_l,
            tok_lp,
            first,
        )


def _merge(parts: list[Scored], groups: list[list[int]]) -> Scored:
    """One Scored, in the original order, from the Scored of each group (:func:`length_groups`,
    :func:`prompt_batches`)."""
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
