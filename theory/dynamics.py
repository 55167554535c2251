"""First-order reward dynamics of EX-RMs and IM-RMs with fixed hidden states (theory/README.md §3).

One gradient step with learning rate η on the Bradley–Terry loss of a triple (x, y+, y−), with
g = σ(r(x,y−) − r(x,y+)), changes the reward of any evaluation pair (x̄, ȳ) by

    Δr_EX(x̄,ȳ) = η g ⟨h_{x̄,ȳ}, h_{x,y+} − h_{x,y−}⟩                                 + O(η²)
    Δr_IM(x̄,ȳ) = η g β² ( Σ_{k,l} ρ_{k,l}(y+) ⟨h̄_k, h+_l⟩ − Σ_{k,l} ρ_{k,l}(y−) ⟨h̄_k, h−_l⟩ ) + O(η²)

    ρ_{k,l}(v) = ⟨e_{ȳ_k} − p_k, e_{v_l} − q_l⟩ = 1[ȳ_k = v_l] − p_k[v_l] − q_l[ȳ_k] + ⟨p_k, q_l⟩

with p_k = softmax(logits of x̄ at the position predicting ȳ_k), q_l = softmax(logits of x at the
position predicting v_l), h̄_k / h_l the hidden states at those positions. The IM sum is the inner
product of W-gradients, Σ_{k,l} ρ_{k,l}⟨h̄_k, h_l⟩ = ⟨∇_W ln π(ȳ|x̄), ∇_W ln π(v|x)⟩_F with
∇_W ln π(y|x) = Σ_k (e_{y_k} − softmax(W h_k)) h_kᵀ ∈ R^{V×D}.

Two routes compute the same number; neither materialises a K×V probability matrix or a V×D
gradient, both stream over vocabulary chunks (``vocab_chunk`` columns at a time):

    route "rho":      ρ = match − gathers + P Qᵀ            cost ≈ K·L·V
    route "gradient": ⟨(Ē − P)ᵀ H̄, (E − Q)ᵀ H⟩ per chunk     cost ≈ (K + L)·V·D

``route="auto"`` takes the cheaper (K·L vs (K + L)·D). Probabilities are normalised after the
chunk loop (exp(logit − row max) accumulated, then divided by the row sums), so every logit is
read once. Everything is computed in ``dtype`` (float64 unless asked otherwise).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from theory._vocab import Rows, add_products, auto_chunk, blas_one_thread

__all__ = [
    "RhoTerms",
    "TokenStates",
    "choose_route",
    "ex_reward_change",
    "im_reward_change",
    "im_reward_change_batch",
    "im_token_contributions",
    "log_prob_grad_W",
    "log_prob_grad_inner",
    "rho",
    "rho_terms",
]


@dataclass(frozen=True)
class TokenStates:
    """What the dynamics need from one (prompt, response) pair of a fixed-representation LM.

    tokens: (K,) int      response token ids y_1..y_K
    hidden: (K, D) float  h_{x,y<k}: the last-layer state at the position that predicts y_k
    logits: (K, V) float  W h_{x,y<k} (+ nothing: no bias, no soft-capping) at the same positions
    """

    tokens: np.ndarray
    hidden: np.ndarray
    logits: np.ndarray

    def __post_init__(self):
        tokens = np.asarray(self.tokens)
        hidden = np.asarray(self.hidden)
        logits = np.asarray(self.logits)
        if tokens.ndim != 1 or tokens.size == 0:
            raise ValueError(
                f"tokens must be a non-empty 1-D array (an empty response has no reward); got {tokens.shape}"
            )
        if not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(f"tokens must be integer ids, got dtype {tokens.dtype}")
        k = tokens.shape[0]
        if hidden.ndim != 2 or hidden.shape[0] != k:
            raise ValueError(f"hidden must be (K={k}, D), got {hidden.shape}")
        if logits.ndim != 2 or logits.shape[0] != k:
            raise ValueError(f"logits must be (K={k}, V), got {logits.shape}")
        v = logits.shape[1]
        if tokens.min() < 0 or tokens.max() >= v:
            raise ValueError(f"token ids must lie in [0, V={v}); got min {tokens.min()}, max {tokens.max()}")
        if not np.all(np.isfinite(hidden)):
            raise ValueError("hidden states contain NaN or inf")
        if np.isnan(logits).any() or not np.all(np.isfinite(logits.max(axis=1))):
            raise ValueError("logits contain NaN, or a row whose largest logit is not finite")
        object.__setattr__(self, "tokens", tokens.astype(np.int64, copy=False))
        object.__setattr__(self, "hidden", hidden)
        object.__setattr__(self, "logits", logits)

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def vocab_size(self) -> int:
        return int(self.logits.shape[1])

    @property
    def hidden_size(self) -> int:
        return int(self.hidden.shape[1])


def _check_compatible(*states: TokenStates) -> None:
    v, d = states[0].vocab_size, states[0].hidden_size
    for s in states[1:]:
        if s.vocab_size != v:
            raise ValueError(
                f"vocabulary sizes differ ({v} vs {s.vocab_size}): mismatched tokenizers or heads?"
            )
        if s.hidden_size != d:
            raise ValueError(f"hidden sizes differ ({d} vs {s.hidden_size})")


def choose_route(n_eval_tokens: int, n_train_tokens: int, hidden_size: int) -> str:
    """'rho' when K·L ≤ (K + L)·D (ρ matrix cheaper than V×D gradients), else 'gradient'."""
    k, ell, d = n_eval_tokens, n_train_tokens, hidden_size
    return "rho" if k * ell <= (k + ell) * d else "gradient"


def _inner_direct(rows_a: Rows, rows_b: Rows, chunk: int, dtype):
    """The common case in one read of each logit and no max: ẽ = exp(logit) unshifted, accumulated
    into ⟨ẽ_a, ẽ_b⟩ and the row sums. None when a row sum or a product of two could leave the
    dtype's normal range (logits beyond ≈ ±300 in float64): then :func:`_inner_online` runs."""
    v = rows_a.vocab
    sa, sb = np.zeros(rows_a.n, dtype=dtype), np.zeros(rows_b.n, dtype=dtype)
    inner = np.zeros((rows_a.n, rows_b.n), dtype=dtype)
    buf_a = np.empty((rows_a.n, min(chunk, v)), dtype=dtype)
    buf_b = np.empty((rows_b.n, min(chunk, v)), dtype=dtype)
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"), blas_one_thread():
        for c0 in range(0, v, chunk):
            w = min(v, c0 + chunk) - c0
            sa += rows_a.exp_into(c0, c0 + chunk, None, buf_a)  # buf_a[:, :w] = exp(logits) (Ka, w)
            sb += rows_b.exp_into(c0, c0 + chunk, None, buf_b)
            add_products(inner, buf_a[:, :w], buf_b[:, :w])  # inner += buf_a buf_bᵀ
        lsa, lsb = np.log(sa), np.log(sb)
    fi = np.finfo(dtype)
    lo, hi = np.log(fi.tiny) + 60.0, np.log(fi.max) - 10.0  # (margins: ≥ 60 nats of precision kept)
    if not (np.isfinite(lsa).all() and np.isfinite(lsb).all()):  # (±inf sums: their bounds are nan)
        return None
    if lsa.min() + lsb.min() < lo or lsa.max() + lsb.max() > hi:
        return None
    return inner / (sa[:, None] * sb[None, :]), lsa, lsb


def _inner_online(rows_a: Rows, rows_b: Rows, chunk: int, dtype):
    """Any logits: exp(logit − running row max), the sums and ⟨·,·⟩ rescaled when a row's max rises."""
    v = rows_a.vocab
    ma, mb = np.full(rows_a.n, -np.inf, dtype=dtype), np.full(rows_b.n, -np.inf, dtype=dtype)
    sa, sb = np.zeros(rows_a.n, dtype=dtype), np.zeros(rows_b.n, dtype=dtype)
    inner = np.zeros((rows_a.n, rows_b.n), dtype=dtype)
    buf_a = np.empty((rows_a.n, min(chunk, v)), dtype=dtype)
    buf_b = np.empty((rows_b.n, min(chunk, v)), dtype=dtype)
    with blas_one_thread():
        for c0 in range(0, v, chunk):
            w = min(v, c0 + chunk) - c0
            ea_sum, fa = rows_a.exp_online(c0, c0 + chunk, ma, buf_a)  # buf_a[:, :w] = ẽ_a (Ka, w)
            eb_sum, fb = rows_b.exp_online(c0, c0 + chunk, mb, buf_b)  # (Kb, w); ma, mb raised
            if c0 and not (np.all(fa == 1.0) and np.all(fb == 1.0)):  # a row max rose: rescale
                inner *= fa[:, None] * fb[None, :]
            sa = sa * fa + ea_sum
            sb = sb * fb + eb_sum
            add_products(inner, buf_a[:, :w], buf_b[:, :w])  # inner += buf_a buf_bᵀ
    return inner / (sa[:, None] * sb[None, :]), ma + np.log(sa), mb + np.log(sb)


def _rho_parts(tok_a, rows_a: Rows, tok_b, rows_b: Rows, chunk, dtype):
    """The four (Ka, Kb) terms of ρ: match, p_a[tok_b], q_b[tok_a], ⟨p_a, q_b⟩ (module docstring).

    One pass over the vocabulary, reading each logit once: exponentials are accumulated
    unnormalised into ⟨·,·⟩ and the row sums and divided by both row sums at the end."""
    chunk = chunk or auto_chunk(rows_a.n + rows_b.n, rows_a.vocab, dtype)
    found = _inner_direct(rows_a, rows_b, chunk, dtype)
    inner, lsa, lsb = found if found is not None else _inner_online(rows_a, rows_b, chunk, dtype)
    p_a_at_b = np.exp(rows_a.gather(tok_b, dtype) - lsa[:, None])  # (Ka, Kb): p_k[v_l]
    q_b_at_a = np.exp(rows_b.gather(tok_a, dtype) - lsb[:, None]).T  # (Ka, Kb): q_l[ȳ_k]
    match = (tok_a[:, None] == tok_b[None, :]).astype(dtype)
    return match, p_a_at_b, q_b_at_a, inner


@dataclass(frozen=True)
class RhoTerms:
    """ρ = match − p_bar_at_v + inner − q_at_ybar, each (K, L) (theory/README.md §3).

    match[k, l] = 1[ȳ_k = v_l];  p_bar_at_v[k, l] = p_k[v_l];  q_at_ybar[k, l] = q_l[ȳ_k];
    inner[k, l] = ⟨p_k, q_l⟩.
    """

    match: np.ndarray
    p_bar_at_v: np.ndarray
    q_at_ybar: np.ndarray
    inner: np.ndarray

    @property
    def rho(self) -> np.ndarray:
        return self.match - self.p_bar_at_v - self.q_at_ybar + self.inner


def rho_terms(
    tokens_bar, logits_bar, tokens, logits, *, vocab_chunk: int | None = None, dtype=np.float64
) -> RhoTerms:
    """The four terms of ρ_{k,l} for evaluation tokens ȳ (K,) with logits (K, V) against training
    tokens v (L,) with logits (L, V). Softmax is taken inside. Returns a :class:`RhoTerms` of (K, L)."""
    tb, lb = np.asarray(tokens_bar, dtype=np.int64), np.asarray(logits_bar)
    t, lg = np.asarray(tokens, dtype=np.int64), np.asarray(logits)
    if lb.ndim != 2 or lg.ndim != 2 or lb.shape[1] != lg.shape[1]:
        raise ValueError(f"logits must be (K, V) and (L, V) with the same V; got {lb.shape} and {lg.shape}")
    if tb.shape != (lb.shape[0],) or t.shape != (lg.shape[0],):
        raise ValueError(f"tokens {tb.shape}/{t.shape} do not match logits rows {lb.shape[0]}/{lg.shape[0]}")
    return RhoTerms(*_rho_parts(tb, Rows([lb]), t, Rows([lg]), vocab_chunk, dtype))


def rho(
    tokens_bar, logits_bar, tokens, logits, *, vocab_chunk: int | None = None, dtype=np.float64
) -> np.ndarray:
    """ρ_{k,l} = ⟨e_{ȳ_k} − p_k, e_{v_l} − q_l⟩, a (K, L) array with entries in [−2, 2].

    tokens_bar: (K,) evaluation tokens; logits_bar: (K, V) logits at the positions predicting them;
    tokens: (L,) training-response tokens; logits: (L, V). theory/README.md §3.
    """
    return rho_terms(tokens_bar, logits_bar, tokens, logits, vocab_chunk=vocab_chunk, dtype=dtype).rho


# ---------------------------------------------------------------------------------------------
# The engine: per-evaluation-token contributions c_k = Σ_l w_l ρ_{k,l} ⟨h̄_k, h_l⟩, where the
# training side stacks y+ (w = +1) and y− (w = −1) into one (L, ·) block.
# ---------------------------------------------------------------------------------------------


def _per_token_rho_route(bar_tok, bar_hid, bar_rows, tr_tok, tr_hid, tr_rows, w, chunk, dtype):
    with blas_one_thread():  # every product on our threads: no BLAS worker left spinning (theory._vocab)
        match, pg, qg, inner = _rho_parts(bar_tok, bar_rows, tr_tok, tr_rows, chunk, dtype)
        s = np.zeros((bar_tok.shape[0], tr_tok.shape[0]), dtype=dtype)
        add_products(s, bar_hid.astype(dtype, copy=False), tr_hid.astype(dtype, copy=False))  # (K, L)
        return ((match - pg - qg + inner) * s) @ w  # (K,)


def _per_token_gradient_route(bar_tok, bar_hid, bar_rows, tr_tok, tr_hid, tr_rows, w, chunk, dtype):
    v = bar_rows.vocab
    chunk = chunk or auto_chunk(bar_rows.n + tr_rows.n, v, dtype)
    hb = bar_hid.astype(dtype, copy=False)  # (K, D)
    wh = w[:, None] * tr_hid.astype(dtype, copy=False)  # (L, D)  w_l h_l
    lse_tr = tr_rows.logsumexp(chunk, dtype)  # training side normalised up front (L is small)
    m_bar = bar_rows.row_max(dtype)
    s_bar = np.zeros(bar_rows.n, dtype=dtype)
    p_t = np.zeros_like(hb)  # (K, D) Σ_chunks ẽ_{k,c} T_c   (ẽ = exp(logit − row max))
    t_at_bar = np.zeros_like(hb)  # (K, D) T[ȳ_k]
    buf_q = np.empty((tr_rows.n, min(chunk, v)), dtype=dtype)
    buf_e = np.empty((bar_rows.n, min(chunk, v)), dtype=dtype)
    for c0 in range(0, v, chunk):
        c1 = min(v, c0 + chunk)
        tr_rows.exp_into(c0, c1, lse_tr, buf_q)  # (L, c) probabilities
        t = -(buf_q[:, : c1 - c0].T @ wh)  # (c, D): T_c = Σ_l w_l (e_{v_l} − q_l)_c h_lᵀ, the −q part ...
        inside = (tr_tok >= c0) & (tr_tok < c1)
        np.add.at(t, tr_tok[inside] - c0, wh[inside])  # ... plus the one-hot part
        s_bar += bar_rows.exp_into(c0, c1, m_bar, buf_e)  # (K, c)
        p_t += buf_e[:, : c1 - c0] @ t
        rows = np.nonzero((bar_tok >= c0) & (bar_tok < c1))[0]
        t_at_bar[rows] = t[bar_tok[rows] - c0]
    return np.einsum("kd,kd->k", t_at_bar - p_t / s_bar[:, None], hb)


def _per_token(bars: Sequence[TokenStates], train: Sequence[tuple[TokenStates, float]], route, chunk, dtype):
    """c_k for the stacked tokens of ``bars`` (Σ_i K_i,) against the weighted training sides."""
    _check_compatible(*bars, *(s for s, _ in train))
    tr_tok = np.concatenate([s.tokens for s, _ in train])
    tr_hid = np.concatenate([s.hidden for s, _ in train])
    w = np.concatenate([np.full(s.n_tokens, wt, dtype=dtype) for s, wt in train])
    bar_tok = np.concatenate([b.tokens for b in bars])
    bar_hid = np.concatenate([b.hidden for b in bars])
    if route == "auto":
        route = choose_route(bar_tok.shape[0], tr_tok.shape[0], bars[0].hidden_size)
    fn = {"rho": _per_token_rho_route, "gradient": _per_token_gradient_route}.get(route)
    if fn is None:
        raise ValueError(f"route must be 'auto', 'rho' or 'gradient', got {route!r}")
    bar_rows, tr_rows = Rows([b.logits for b in bars]), Rows([s.logits for s, _ in train])
    return fn(bar_tok, bar_hid, bar_rows, tr_tok, tr_hid, tr_rows, w, chunk, dtype)


def log_prob_grad_inner(
    a: TokenStates, b: TokenStates, *, route: str = "auto", vocab_chunk: int | None = None, dtype=np.float64
) -> float:
    """⟨∇_W ln π(a), ∇_W ln π(b)⟩_F = Σ_{k,l} ρ_{k,l} ⟨h^a_k, h^b_l⟩ for the unembedding W (V×D)."""
    return float(_per_token([a], [(b, 1.0)], route, vocab_chunk, dtype).sum())


def im_reward_change(
    bar: TokenStates,
    plus: TokenStates,
    minus: TokenStates,
    *,
    beta: float,
    lr: float,
    g: float,
    route: str = "auto",
    vocab_chunk: int | None = None,
    dtype=np.float64,
) -> float:
    """First-order Δr_IM(x̄, ȳ) after one GD step (rate ``lr``) on W for the triple (x, y+, y−).

    = lr · g · β² · (⟨∇_W ln π(ȳ|x̄), ∇_W ln π(y+|x)⟩ − ⟨∇_W ln π(ȳ|x̄), ∇_W ln π(y−|x)⟩).
    bar/plus/minus: :class:`TokenStates` with K, L+, L− tokens and shared V, D.
    g: σ(r(x,y−) − r(x,y+)) (see ``theory.rewards.bt_grad_scale``). theory/README.md §3.
    """
    c = _per_token([bar], [(plus, 1.0), (minus, -1.0)], route, vocab_chunk, dtype)
    return float(lr * g * beta**2 * c.sum())


def im_reward_change_batch(
    bars: Sequence[TokenStates],
    plus: TokenStates,
    minus: TokenStates,
    *,
    beta: float,
    lr: float,
    g: float,
    route: str = "auto",
    vocab_chunk: int | None = None,
    dtype=np.float64,
    max_group_tokens: int = 4096,
) -> np.ndarray:
    """:func:`im_reward_change` for N evaluation sequences against one training triple → (N,).

    Evaluation sequences are stacked (without copying their logits) into groups of at most
    ``max_group_tokens`` tokens, so the training side is streamed once per group and each matrix
    product is large.
    """
    if len(bars) == 0:
        return np.zeros(0)
    out = np.empty(len(bars))
    start = 0
    while start < len(bars):
        stop, n = start, 0
        while stop < len(bars) and (stop == start or n + bars[stop].n_tokens <= max_group_tokens):
            n += bars[stop].n_tokens
            stop += 1
        group = bars[start:stop]
        c = _per_token(group, [(plus, 1.0), (minus, -1.0)], route, vocab_chunk, dtype)
        bounds = np.cumsum([0] + [b.n_tokens for b in group])
        out[start:stop] = lr * g * beta**2 * np.add.reduceat(c, bounds[:-1])
        start = stop
    return out


def im_token_contributions(
    bar: TokenStates,
    plus: TokenStates,
    minus: TokenStates,
    *,
    beta: float,
    lr: float,
    g: float,
    vocab_chunk: int | None = None,
    dtype=np.float64,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-token-pair contributions to Δr_IM: (C+ (K, L+), C− (K, L−)) with
    C±[k, l] = lr·g·β²·ρ_{k,l}(y±)·⟨h̄_k, h±_l⟩, so that Δr_IM = C+.sum() − C−.sum()."""
    _check_compatible(bar, plus, minus)
    out = []
    for side in (plus, minus):
        r = rho(bar.tokens, bar.logits, side.tokens, side.logits, vocab_chunk=vocab_chunk, dtype=dtype)
        s = bar.hidden.astype(dtype, copy=False) @ side.hidden.astype(dtype, copy=False).T
        out.append(lr * g * beta**2 * r * s)
    return out[0], out[1]


def ex_reward_change(h_bar, h_plus, h_minus, *, lr: float, g: float):
    """First-order Δr_EX(x̄, ȳ) = lr · g · ⟨h_{x̄,ȳ}, h_{x,y+} − h_{x,y−}⟩ after one GD step on u.

    h_bar: (D,) or (N, D) last-token states of the evaluation pairs; h_plus, h_minus: (D,).
    Returns a float for (D,) input, else (N,). theory/README.md §3.
    """
    hb = np.asarray(h_bar, dtype=np.float64)
    diff = np.asarray(h_plus, dtype=np.float64) - np.asarray(h_minus, dtype=np.float64)
    if diff.ndim != 1 or hb.shape[-1] != diff.shape[0]:
        raise ValueError(f"h_plus/h_minus must be (D,), h_bar (..., D); got {diff.shape}, {hb.shape}")
    out = lr * g * (hb @ diff)
    return float(out) if out.ndim == 0 else out


def softmax_rows(logits) -> np.ndarray:
    """softmax of each row of (K, V) logits, in float64 (max-shifted)."""
    lg = np.asarray(logits, dtype=np.float64)
    p = np.exp(lg - lg.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def log_prob_grad_W(tokens, hidden, logits) -> np.ndarray:
    """∇_W ln π(y|x) = Σ_k (e_{y_k} − softmax(logits_k)) h_kᵀ, a dense (V, D) array (for checks and
    small V; the engine above never forms it). tokens (K,), hidden (K, D), logits (K, V)."""
    s = TokenStates(tokens, hidden, logits)
    a = -softmax_rows(s.logits)
    a[np.arange(s.n_tokens), s.tokens] += 1.0
    return a.T @ s.hidden.astype(np.float64)
