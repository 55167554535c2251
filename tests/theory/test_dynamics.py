"""theory.dynamics against its definitions, torch autograd, sympy and real gradient steps."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from theory import (
    TokenStates,
    bt_grad_scale,
    ex_reward_change,
    im_reward_change,
    im_reward_change_batch,
    im_token_contributions,
    log_prob_grad_inner,
    log_prob_grad_W,
    rho,
    rho_terms,
)
from theory.dynamics import choose_route


def softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def rho_one_hot(tb, lb, t, lg):
    """ρ_{k,l} = ⟨e_{ȳ_k} − p_k, e_{v_l} − q_l⟩ straight from the definition (dense one-hots)."""
    V = lb.shape[1]
    a = np.eye(V)[tb] - softmax(lb)
    b = np.eye(V)[t] - softmax(lg)
    return a @ b.T


@st.composite
def rho_case(draw, max_v=12):
    V = draw(st.integers(2, max_v))
    K = draw(st.integers(1, 5))
    L = draw(st.integers(1, 5))
    scale = draw(st.sampled_from([0.1, 1.0, 10.0, 200.0, 1000.0]))  # (1000: past the unshifted route)
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    tb = rng.integers(0, V, K)
    t = rng.integers(0, V, L)
    # force some overlap in about half the cases
    if draw(st.booleans()):
        t[0] = tb[0]
    return tb, scale * rng.normal(size=(K, V)), t, scale * rng.normal(size=(L, V))


def make_model(V=40, D=7, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(V, D)) / np.sqrt(D), rng


def states(W, rng, K, tokens=None, scale=1.0):
    h = scale * rng.normal(size=(K, W.shape[1]))
    t = rng.integers(0, W.shape[0], K) if tokens is None else np.asarray(tokens)
    return TokenStates(t, h, h @ W.T)


def torch_logprob(W, s: TokenStates):
    h = torch.as_tensor(s.hidden)
    return torch.log_softmax(h @ W.T, dim=-1)[torch.arange(s.n_tokens), torch.as_tensor(s.tokens)].sum()


def torch_grad(W_np, s):
    W = torch.tensor(W_np, requires_grad=True)
    (g,) = torch.autograd.grad(torch_logprob(W, s), W)
    return g.numpy()


def _im_step_errors(etas, seed=5):
    """Train only W of the IM-RM r = β ln(π_W/π_ref) one GD step; compare Δr on eval sequences."""
    V, D, beta = 30, 6, 0.5
    W_ref, rng = make_model(V, D, seed)
    W0 = W_ref + 0.3 * rng.normal(size=W_ref.shape)  # away from the reference: g ≠ ½, r ≠ 0
    hp, hm = rng.normal(size=(4, D)), rng.normal(size=(3, D))
    tp, tm = rng.integers(0, V, 4), rng.integers(0, V, 3)
    evals = [(rng.integers(0, V, 5), rng.normal(size=(5, D))) for _ in range(6)]

    def reward(W, t, h):
        lp = torch.log_softmax(torch.as_tensor(h) @ W.T, -1)[torch.arange(len(t)), torch.as_tensor(t)].sum()
        lr_ = torch.log_softmax(torch.as_tensor(h @ W_ref.T), -1)[
            torch.arange(len(t)), torch.as_tensor(t)
        ].sum()
        return beta * (lp - lr_)

    W = torch.tensor(W0, requires_grad=True)
    rp, rm = reward(W, tp, hp), reward(W, tm, hm)
    loss = torch.nn.functional.softplus(rm - rp)
    (grad,) = torch.autograd.grad(loss, W)
    g = float(bt_grad_scale(rp.item(), rm.item()))
    S = lambda t, h: TokenStates(t, h, h @ W0.T)  # noqa: E731
    errs = []
    for eta in etas:
        W1 = torch.as_tensor(W0) - eta * grad
        pred = np.array(
            [im_reward_change(S(t, h), S(tp, hp), S(tm, hm), beta=beta, lr=eta, g=g) for t, h in evals]
        )
        obs = np.array([(reward(W1, t, h) - reward(torch.as_tensor(W0), t, h)).item() for t, h in evals])
        errs.append(np.linalg.norm(pred - obs) / np.linalg.norm(obs))
    return np.array(errs)


@settings(max_examples=200, deadline=None)
@given(rho_case(), st.sampled_from([None, 1, 3]))
def test_rho_closed_form_equals_one_hot_definition(case, chunk):
    tb, lb, t, lg = case
    got = rho(tb, lb, t, lg, vocab_chunk=chunk)
    np.testing.assert_allclose(got, rho_one_hot(tb, lb, t, lg), rtol=0, atol=1e-12)


@settings(max_examples=200, deadline=None)
@given(rho_case())
def test_rho_bounds_and_overlap_lower_bound(case):
    tb, lb, t, lg = case
    r = rho(tb, lb, t, lg)
    assert np.all(r >= -2 - 1e-12) and np.all(r <= 2 + 1e-12)
    p, q = softmax(lb), softmax(lg)
    for k in range(len(tb)):
        for j in range(len(t)):
            if tb[k] == t[j]:
                a = tb[k]
                assert r[k, j] >= (1 - p[k, a]) * (1 - q[j, a]) - 1e-12


def test_rho_can_be_negative_for_distinct_tokens():
    # Both positions put most mass on token 0; evaluation token 1, training token 2:
    # ρ = 0 − p[2] − q[1] + ⟨p, q⟩ ≈ ⟨p,q⟩ small... choose p on ȳ's competitor, q on v's competitor
    lb = np.array([[0.0, 0.0, 8.0]])  # p puts mass on token 2 (= v)
    lg = np.array([[0.0, 8.0, 0.0]])  # q puts mass on token 1 (= ȳ)
    r = rho([1], lb, [2], lg)[0, 0]
    assert r < -0.9  # the IM-RM can move opposite to the EX-RM


def test_rho_terms_recombine():
    rng = np.random.default_rng(0)
    tb, t = rng.integers(0, 9, 4), rng.integers(0, 9, 3)
    lb, lg = rng.normal(size=(4, 9)), rng.normal(size=(3, 9))
    terms = rho_terms(tb, lb, t, lg)
    p, q = softmax(lb), softmax(lg)
    np.testing.assert_array_equal(terms.match, (tb[:, None] == t[None, :]).astype(float))
    np.testing.assert_allclose(terms.p_bar_at_v, p[:, t], atol=1e-15)
    np.testing.assert_allclose(terms.q_at_ybar, q[:, tb].T, atol=1e-15)
    np.testing.assert_allclose(terms.inner, p @ q.T, atol=1e-15)
    np.testing.assert_allclose(terms.rho, rho_one_hot(tb, lb, t, lg), atol=1e-14)


@pytest.mark.parametrize("route", ["rho", "gradient"])
@pytest.mark.parametrize("chunk", [None, 5, 40])
def test_im_reward_change_equals_autograd_gradient_inner_product(route, chunk):
    W, rng = make_model(V=40, D=7, seed=1)
    bar = states(W, rng, 6)
    plus = states(W, rng, 5, tokens=np.r_[bar.tokens[:2], rng.integers(0, 40, 3)])
    minus = states(W, rng, 4)
    beta, lr, g = 0.3, 0.05, 0.7
    gb, gp, gm = (torch_grad(W, s) for s in (bar, plus, minus))
    want = lr * g * beta**2 * ((gb * gp).sum() - (gb * gm).sum())
    got = im_reward_change(bar, plus, minus, beta=beta, lr=lr, g=g, route=route, vocab_chunk=chunk)
    assert abs(got - want) <= 1e-10 * abs(want)
    inner = log_prob_grad_inner(bar, plus, route=route, vocab_chunk=chunk)
    assert abs(inner - (gb * gp).sum()) <= 1e-10 * abs(inner)


def test_batch_and_contributions_agree_with_single_calls():
    W, rng = make_model(V=30, D=5, seed=2)
    plus, minus = states(W, rng, 3), states(W, rng, 4)
    bars = [states(W, rng, k) for k in (1, 4, 2, 7, 3)]
    single = [im_reward_change(b, plus, minus, beta=0.1, lr=1.0, g=0.5) for b in bars]
    for route in ("rho", "gradient"):
        batch = im_reward_change_batch(
            bars, plus, minus, beta=0.1, lr=1.0, g=0.5, route=route, max_group_tokens=6
        )
        np.testing.assert_allclose(batch, single, rtol=1e-12)
    c_plus, c_minus = im_token_contributions(bars[3], plus, minus, beta=0.1, lr=1.0, g=0.5)
    assert c_plus.shape == (7, 3) and c_minus.shape == (7, 4)
    assert np.isclose(c_plus.sum() - c_minus.sum(), single[3], rtol=1e-12)


@pytest.mark.parametrize("route", ["rho", "gradient"])
def test_threaded_vocabulary_streaming_is_exact_and_thread_count_free(route, monkeypatch):
    """The exponentials are split by rows between threads, across the stacked blocks of several
    evaluation sequences (theory._vocab.Rows): the batch equals autograd's gradient inner products,
    bitwise the same for 1, 2 and 3 threads."""
    import theory._vocab as vocab

    monkeypatch.setattr(vocab, "_MIN_PARALLEL", 0)  # thread even these small blocks
    W, rng = make_model(V=50, D=6, seed=7)
    plus, minus = states(W, rng, 3), states(W, rng, 5)
    bars = [states(W, rng, k) for k in (2, 5, 1, 4)]
    gp, gm = torch_grad(W, plus), torch_grad(W, minus)
    want = [0.1**2 * 0.5 * ((torch_grad(W, b) * (gp - gm)).sum()) for b in bars]
    got = {}
    for n in ("1", "2", "3"):
        monkeypatch.setenv("RMGAP_THREADS", n)
        kw = dict(beta=0.1, lr=1.0, g=0.5, route=route, vocab_chunk=7)
        got[n] = im_reward_change_batch(bars, plus, minus, **kw)
        np.testing.assert_allclose(got[n], want, rtol=1e-10)
    assert np.array_equal(got["1"], got["2"]) and np.array_equal(got["1"], got["3"])


@pytest.mark.parametrize("scale", [1.0, 400.0])
def test_float32_logits_are_computed_in_the_engines_dtype(scale):
    """float32 logits (a float32 model's) with the float64 engine: every exponential in float64, so the
    result equals the one from the same logits held in float64 (to rounding); at scale 400 the
    unshifted route would overflow (e^800) and the running-max route takes over."""
    W, rng = make_model(V=60, D=5, seed=11)
    trip = [states(W, rng, k, scale=scale) for k in (4, 3, 5)]
    f32 = [TokenStates(s.tokens, s.hidden, s.logits.astype(np.float32)) for s in trip]
    f64 = [TokenStates(s.tokens, s.hidden, s.logits.astype(np.float32).astype(np.float64)) for s in f32]
    kw = dict(beta=0.2, lr=1.0, g=0.5, route="rho", vocab_chunk=16)
    want = im_reward_change(*f64, **kw)
    assert abs(im_reward_change(*f32, **kw) - want) <= 1e-12 * abs(want)
    if scale > 1:  # the truth, from autograd on the float64 logits' own W: finite and right
        assert np.isfinite(want)


def test_dense_gradient_matches_autograd():
    W, rng = make_model(V=25, D=4, seed=3)
    s = states(W, rng, 5)
    np.testing.assert_allclose(log_prob_grad_W(s.tokens, s.hidden, s.logits), torch_grad(W, s), atol=1e-13)


def test_sympy_derivative_of_log_softmax():
    V, D = 3, 2
    Ws = sp.Matrix(V, D, lambda i, j: sp.Symbol(f"w{i}{j}"))
    hs = sp.Matrix(D, 1, lambda i, _: sp.Symbol(f"h{i}"))
    z = Ws * hs
    y = 1
    logp = z[y] - sp.log(sum(sp.exp(z[i]) for i in range(V)))
    grad = sp.Matrix(V, D, lambda i, j: sp.diff(logp, Ws[i, j]))
    rng = np.random.default_rng(4)
    W_val, h_val = rng.normal(size=(V, D)), rng.normal(size=D)
    subs = {Ws[i, j]: W_val[i, j] for i in range(V) for j in range(D)} | {hs[i]: h_val[i] for i in range(D)}
    want = np.array(grad.subs(subs).evalf(30), dtype=np.float64)
    got = log_prob_grad_W([y], h_val[None, :], (W_val @ h_val)[None, :])
    np.testing.assert_allclose(got, want, atol=1e-14)


def test_im_prediction_error_is_first_order_in_eta():
    errs = _im_step_errors([1e-2, 1e-3, 1e-4])
    ratios = errs[:-1] / errs[1:]
    print(f"IM first-order rel. error at η = 1e-2, 1e-3, 1e-4: {errs}; ratios {ratios}")
    assert errs[-1] < 1e-3
    assert np.all((ratios > 7) & (ratios < 13)), (errs, ratios)


def test_ex_prediction_vs_step_of_u():
    """r_EX is linear in u, so the first-order prediction is exact (up to rounding) at any η."""
    rng = np.random.default_rng(6)
    D = 9
    u0 = rng.normal(size=D)
    hp, hm, hbar = rng.normal(size=D), rng.normal(size=D), rng.normal(size=(5, D))
    u = torch.tensor(u0, requires_grad=True)
    loss = torch.nn.functional.softplus(u @ torch.as_tensor(hm) - u @ torch.as_tensor(hp))
    (grad,) = torch.autograd.grad(loss, u)
    g = float(bt_grad_scale(u0 @ hp, u0 @ hm))
    for eta in (0.5, 1e-3):
        obs = hbar @ (u0 - eta * grad.numpy()) - hbar @ u0
        pred = ex_reward_change(hbar, hp, hm, lr=eta, g=g)
        # obs is a difference of two O(1) rewards: compare at the rounding level of those rewards
        np.testing.assert_allclose(pred, obs, rtol=1e-9, atol=1e-13 * np.abs(hbar @ u0).max())


def test_input_validation_names_the_problem():
    W, rng = make_model(V=10, D=3)
    good = states(W, rng, 2)
    with pytest.raises(ValueError, match="empty response"):
        TokenStates(np.array([], dtype=int), np.zeros((0, 3)), np.zeros((0, 10)))
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, V=10\)"):
        TokenStates([3, 10], good.hidden, good.logits)
    with pytest.raises(ValueError, match="NaN"):
        TokenStates(good.tokens, good.hidden, np.full((2, 10), np.nan))
    other = TokenStates([1], np.zeros((1, 3)), np.zeros((1, 11)))
    with pytest.raises(ValueError, match="mismatched tokenizers"):
        im_reward_change(good, other, good, beta=1, lr=1, g=1)
    with pytest.raises(ValueError, match="route"):
        im_reward_change(good, good, good, beta=1, lr=1, g=1, route="fast")


def test_choose_route():
    assert choose_route(512, 1024, 2048) == "rho"
    assert choose_route(4096, 4096, 576) == "gradient"


def test_the_rho_route_runs_its_products_split_on_one_thread_blas(monkeypatch):
    """On two cores the rho route runs every product (ẽ_a ẽ_bᵀ per chunk, H̄ Hᵀ) as one-thread BLAS
    parts on its own threads (theory._vocab.add_products inside blas_one_thread), so no BLAS worker is
    left spinning beside the exponentials; each split product equals a @ b.T, and BLAS's thread count
    is restored after the call."""
    from threadpoolctl import threadpool_info

    import theory._vocab as vocab
    from theory import dynamics

    def blas_threads():
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    monkeypatch.setenv("RMGAP_THREADS", "2")
    monkeypatch.setattr(vocab, "_MIN_PARALLEL", 0)
    seen, real = [], vocab.add_products

    def spy(inner, a, b):
        before = inner.copy()
        seen.append((a.shape, b.shape, blas_threads()))
        real(inner, a, b)
        np.testing.assert_allclose(inner - before, a @ b.T, rtol=1e-12, atol=1e-300)

    monkeypatch.setattr(dynamics, "add_products", spy)
    W, rng = make_model(V=50, D=6, seed=3)
    outside = blas_threads()
    trip = (states(W, rng, k) for k in (4, 3, 5))
    im_reward_change(*trip, beta=0.1, lr=1.0, g=0.5, route="rho", vocab_chunk=16)
    assert [(a, b) for a, b, _ in seen] == [((4, 16), (8, 16))] * 3 + [((4, 2), (8, 2)), ((4, 6), (8, 6))]
    assert all(t == {1} for *_, t in seen) and blas_threads() == outside
    assert vocab.product_parts(4, 8, 16) == (False, [(0, 4), (4, 8)])  # the longer side, one part a core
