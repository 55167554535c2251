"""Which responses does one preference update move, by how much, and why? (THEORY.md §3 on real LMs)

For training triple(s) (x, y+, y−) and evaluation pairs (x̄, ȳ+, ȳ−) this computes, for an EX-RM
(r = ⟨u, h_last⟩, u a fresh random head) and an IM-RM (r = β ln π_θ/π_ref, π_ref = the loaded LM):

  fixed-state prediction   theory.dynamics with the LM's own states and logits (only W or u move);
  exact first order        η·⟨∇_θ r̄, −∇_θ ℓ⟩ over all parameters (forward-mode JVP, batched);
  observed, head-only      one real SGD step on an untied copy of the output head W (IM) or on u (EX);
  observed, full           one real SGD step on all parameters (and u for the EX-RM).

ℓ is the mean Bradley–Terry loss over the training triples. Before training the IM-RM's rewards are
all 0, so g = ½ there; the EX-RM's g comes from its random head. Everything is restored after each
step, so the four columns refer to the same θ0.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr
from torch.func import functional_call, jvp

from lm_probes.data import Pair
from lm_probes.loading import LoadedLM
from lm_probes.scoring import Encoded, Scorer, encode, extract_states, pad_id_of, prompt_groups, score
from theory import (
    bt_grad_scale,
    ex_reward_change,
    im_reward_change_batch,
    im_token_contributions,
    max_margin_separator,
)
from theory.max_margin import NotSeparableError


@dataclass(frozen=True)
class ProbeConfig:
    beta: float = 0.01
    lr: float = 1e-3
    chat_template: bool = True
    batch_size: int = 16
    modes: tuple = ("head_only", "full")
    ex_head_seed: int = 0
    progress: bool = True


def _bar(it, desc, enabled):
    if not enabled:
        return it
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return it
    return tqdm(it, desc=desc, leave=False)


class Timer:
    """Accumulates wall time per phase: ``with timer("model"): ...``."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


def compare(pred, obs) -> dict:
    """Pearson, Spearman, sign agreement and median relative error |pred − obs| / |obs|."""
    pred, obs = np.asarray(pred, float), np.asarray(obs, float)
    ok = len(pred) > 2 and np.std(pred) > 0 and np.std(obs) > 0
    return dict(
        pearson=float(pearsonr(pred, obs)[0]) if ok else math.nan,
        spearman=float(spearmanr(pred, obs)[0]) if ok else math.nan,
        sign_agreement=float(np.mean(np.sign(pred) == np.sign(obs))),
        median_rel_error=float(np.median(np.abs(pred - obs) / np.maximum(np.abs(obs), 1e-300))),
        n=len(pred),
    )


class _Probe:
    def __init__(self, lm: LoadedLM, cfg: ProbeConfig):
        self.lm, self.cfg = lm, cfg
        self.model, self.pad = lm.model, pad_id_of(lm.tokenizer)
        self.max_len = lm.info.get("max_positions")

    def encode_pairs(self, pairs: list[Pair]) -> list[Encoded]:
        """[chosen_0, rejected_0, chosen_1, ...] encoded through the one scoring path."""
        out = []
        for p in pairs:
            for role, resp in (("chosen", p.chosen), ("rejected", p.rejected)):
                out.append(
                    encode(
                        self.lm.tokenizer,
                        p.prompt,
                        resp,
                        chat_template=self.cfg.chat_template,
                        max_length=self.max_len,
                        where=f"{p.where} ({role})",
                    )
                )
        return out

    def batches(self, encs, desc):
        """Chunks of encodings that share a prompt (so score() runs each prompt once)."""
        chunks = [[encs[i] for i in idx] for idx in prompt_groups(encs, self.cfg.batch_size)]
        return _bar(chunks, desc, self.cfg.progress)

    @torch.no_grad()
    def logprobs_and_last(self, encs, desc="forward"):
        """(ln π (N,), last states (N, D)) in the order of ``encs``."""
        order = [i for idx in prompt_groups(encs, self.cfg.batch_size) for i in idx]
        lps, lasts = [], []
        for chunk in self.batches(encs, desc):
            sc = score(self.model, chunk, self.pad)
            lps.append(sc.logprob)
            lasts.append(sc.last_hidden)
        inv = torch.empty(len(order), dtype=torch.long)
        inv[torch.tensor(order)] = torch.arange(len(order))
        return torch.cat(lps)[inv], torch.cat(lasts)[inv]

    def train_loss(self, tr_encs, ref_lp, kind, u=None):
        """Mean BT loss over the training triples (encs = [c0, r0, c1, r1, ...])."""
        sc = score(self.model, tr_encs, self.pad)
        r = self.cfg.beta * (sc.logprob - ref_lp) if kind == "im" else sc.last_hidden @ u
        return torch.nn.functional.softplus(r[1::2] - r[0::2]).mean()

    def jvp_rewards(self, encs, tangents, kind, u, v_u=None):
        """η·⟨∇ r̄, v⟩ for every evaluation response, v = −∇ℓ (forward-mode, batched by prompt)."""
        scorer = Scorer(self.model)
        params = {f"model.{n}": p.detach() for n, p in self.model.named_parameters()}
        tan = {f"model.{n}": t for n, t in tangents.items()}
        order = [i for idx in prompt_groups(encs, self.cfg.batch_size) for i in idx]
        out = []
        for chunk in self.batches(encs, f"jvp {kind}"):

            def f(p, uu, chunk=chunk):
                sc = functional_call(scorer, p, (chunk, self.pad))
                return self.cfg.beta * sc.logprob if kind == "im" else sc.last_hidden @ uu

            v = v_u if v_u is not None else torch.zeros_like(u)
            _, t = jvp(f, (params, u.detach()), (tan, v))
            out.append(t.detach())
        inv = torch.empty(len(order), dtype=torch.long)
        inv[torch.tensor(order)] = torch.arange(len(order))
        return self.cfg.lr * torch.cat(out)[inv]


def _head_only_changes(P: _Probe, tr_encs, ev_encs, ref_tr, ref_ev, u0, h_tr, h_ev) -> dict:
    """One real SGD step on an untied copy of the output head W (IM-RM) and on u (EX-RM)."""
    cfg, model = P.cfg, P.model
    head = model.get_output_embeddings()
    original = head.weight
    head.weight = torch.nn.Parameter(original.detach().clone())
    try:
        loss = P.train_loss(tr_encs, ref_tr, "im")
        (gW,) = torch.autograd.grad(loss, [head.weight])
        with torch.no_grad():
            head.weight -= cfg.lr * gW
        lp1, _ = P.logprobs_and_last(ev_encs, "head-only IM step")
    finally:
        head.weight = original
    u = u0.clone().requires_grad_(True)
    h_tr_t = torch.as_tensor(h_tr, dtype=u0.dtype)
    loss = torch.nn.functional.softplus(h_tr_t[1::2] @ u - h_tr_t[0::2] @ u).mean()
    (gu,) = torch.autograd.grad(loss, [u])
    return {
        "im_head_only": (cfg.beta * (lp1 - ref_ev)).double().numpy(),
        "ex_head_only": h_ev @ (-cfg.lr * gu).double().numpy(),
    }


def _full_changes(P: _Probe, tr_encs, ev_encs, ref_tr, ref_ev, u0, h_ev, T: Timer) -> dict:
    """Exact first order (JVP along −∇ℓ) and one real SGD step on all parameters, for IM and EX."""
    cfg, model = P.cfg, P.model
    named = list(model.named_parameters())
    params = [p for _, p in named]
    backup = [p.detach().clone() for p in params]
    cols = {}
    for kind in ("im", "ex"):
        u = u0.clone().requires_grad_(kind == "ex")
        with T("model: full-parameter gradient"):
            for p in params:
                p.requires_grad_(True)
            loss = P.train_loss(tr_encs, ref_tr, kind, u)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the {kind} training loss is {loss.item()} at θ0")
            grads = torch.autograd.grad(loss, params + ([u] if kind == "ex" else []))
            for p in params:
                p.requires_grad_(False)
        tangents = {nm: -g for (nm, _), g in zip(named, grads[: len(params)], strict=True)}
        v_u = -grads[-1] if kind == "ex" else None
        with T("model: first-order JVP"):
            cols[f"{kind}_first_order"] = P.jvp_rewards(ev_encs, tangents, kind, u0, v_u).double().numpy()
        with T("model: full-parameter step"), torch.no_grad():
            for p, g in zip(params, grads, strict=False):
                p -= cfg.lr * g
            lp1, last1 = P.logprobs_and_last(ev_encs, f"full {kind} step")
            if kind == "im":
                cols["im_full"] = (cfg.beta * (lp1 - ref_ev)).double().numpy()
            else:
                u1 = u0 - cfg.lr * grads[-1]
                cols["ex_full"] = (last1 @ u1).double().numpy() - h_ev @ u0.double().numpy()
            for p, b in zip(params, backup, strict=True):
                p.copy_(b)
    return cols


def run_probe(
    lm: LoadedLM,
    train: list[Pair],
    evals: list[Pair],
    cfg: ProbeConfig = ProbeConfig(),
    margin: list[Pair] | None = None,
) -> dict:
    """Run the probe; returns {"records": [...per evaluation response...], "summary": {...}}."""
    if not train:
        raise ValueError("run_probe needs at least one training triple")
    if not evals:
        raise ValueError("run_probe needs at least one evaluation pair")
    P = _Probe(lm, cfg)
    T = Timer()
    model, dtype = lm.model, lm.dtype
    with T("tokenise"):
        tr_encs, ev_encs = P.encode_pairs(train), P.encode_pairs(evals)
    merged = [e.where for e in tr_encs + ev_encs if e.boundary_merged]

    # --- states at θ0 --------------------------------------------------------------------------
    with T("model: states at θ0"):
        tr_states = extract_states(model, tr_encs, P.pad)
        ev_states = extract_states(model, ev_encs, P.pad)
    ref_tr = torch.tensor([s.logprob for s in tr_states], dtype=dtype)
    ref_ev = torch.tensor([s.logprob for s in ev_states], dtype=dtype)
    D = lm.info["hidden_size"]
    gen = torch.Generator().manual_seed(cfg.ex_head_seed)
    u0 = (torch.randn(D, generator=gen, dtype=torch.float64) / math.sqrt(D)).to(dtype)
    h_tr = np.stack([s.last_hidden for s in tr_states])
    h_ev = np.stack([s.last_hidden for s in ev_states])
    r_ex_tr = h_tr @ u0.double().numpy()
    g_ex = bt_grad_scale(r_ex_tr[0::2], r_ex_tr[1::2])
    n = len(train)

    # --- fixed-state predictions (theory.dynamics) ------------------------------------------------
    bars = [s.states for s in ev_states]
    with T("dynamics arithmetic"):
        im_fixed = sum(
            im_reward_change_batch(
                bars,
                tr_states[2 * i].states,
                tr_states[2 * i + 1].states,
                beta=cfg.beta,
                lr=cfg.lr / n,
                g=0.5,
            )
            for i in range(n)
        )
        ex_fixed = sum(
            ex_reward_change(h_ev, h_tr[2 * i], h_tr[2 * i + 1], lr=cfg.lr / n, g=float(g_ex[i]))
            for i in range(n)
        )
        # which token pairs drive the IM-RM's predicted change: C±[k, l] = η g β² ρ_{k,l} ⟨h̄_k, h±_l⟩
        contributions = []
        for j, bar in enumerate(bars):
            per_triple = []
            for i in range(n):
                plus, minus = tr_states[2 * i].states, tr_states[2 * i + 1].states
                c_plus, c_minus = im_token_contributions(
                    bar, plus, minus, beta=cfg.beta, lr=cfg.lr / n, g=0.5
                )
                per_triple.append({"plus": c_plus.tolist(), "minus": c_minus.tolist()})
            contributions.append({"index": j, "tokens": bar.tokens.tolist(), "im": per_triple})
    cols = {"im_fixed_state": im_fixed, "ex_fixed_state": ex_fixed}
    for p in model.parameters():
        p.requires_grad_(False)
    if "head_only" in cfg.modes:
        with T("model: head-only steps"):
            cols.update(_head_only_changes(P, tr_encs, ev_encs, ref_tr, ref_ev, u0, h_tr, h_ev))
    if "full" in cfg.modes:
        cols.update(_full_changes(P, tr_encs, ev_encs, ref_tr, ref_ev, u0, h_ev, T))

    # --- max-margin check (the paper's footnote) --------------------------------------------------
    mm = None
    if margin:
        mg_states = extract_states(model, P.encode_pairs(margin), P.pad, verify_head=False)
        X = np.stack(
            [mg_states[2 * i].last_hidden - mg_states[2 * i + 1].last_hidden for i in range(len(margin))]
            + [h_tr[2 * i] - h_tr[2 * i + 1] for i in range(n)]
        )
        try:
            u_star = max_margin_separator(X).u
            mm = {
                g: float(
                    np.mean(
                        [
                            (h_ev[2 * i] - h_ev[2 * i + 1]) @ u_star > 0
                            for i, p in enumerate(evals)
                            if p.group == g
                        ]
                    )
                )
                for g in dict.fromkeys(p.group for p in evals)
            }
        except NotSeparableError as exc:
            mm = {"error": str(exc)}

    records = []
    for j, e in enumerate(ev_encs):
        pair = evals[j // 2]
        rec = dict(
            group=pair.group,
            where=pair.where,
            role="chosen" if j % 2 == 0 else "rejected",
            response=pair.chosen if j % 2 == 0 else pair.rejected,
            n_tokens=e.response_len,
            boundary_merged=e.boundary_merged,
        )
        rec.update({k: float(v[j]) for k, v in cols.items()})
        records.append(rec)
    summary = summarise(records, cols)
    summary.update(
        timings=T.seconds,
        max_margin_fraction_positive=mm,
        boundary_merged=merged,
        n_train_triples=n,
        n_eval_pairs=len(evals),
        config=asdict(cfg),
        model=lm.info,
        ex_g=[float(x) for x in g_ex],
        im_g=0.5,
    )
    tok = lm.tokenizer
    train_tokens = [
        [tok.convert_ids_to_tokens(s.states.tokens.tolist()) for s in tr_states[2 * i : 2 * i + 2]]
        for i in range(n)
    ]
    for c in contributions:
        c.update(
            tokens=tok.convert_ids_to_tokens(c["tokens"]),
            group=records[c["index"]]["group"],
            response=records[c["index"]]["response"],
            train_tokens=train_tokens,
        )
    return {"records": records, "summary": summary, "contributions": contributions}


def summarise(records: list[dict], cols: dict) -> dict:
    groups = list(dict.fromkeys(r["group"] for r in records))

    def pick(key, group=None):
        return np.array([r[key] for r in records if group is None or r["group"] == group])

    out: dict = {}
    for mode, pairs in (
        ("head_only", [("im", "im_fixed_state", "im_head_only"), ("ex", "ex_fixed_state", "ex_head_only")]),
    ):
        if all(obs in cols for _, _, obs in pairs):
            out[mode] = {}
            for kind, pred, obs in pairs:
                c = compare(pick(pred), pick(obs))
                c["by_group"] = {g: compare(pick(pred, g), pick(obs, g)) for g in groups}
                out[mode][kind] = c
    if "im_full" in cols:
        out["full"] = {}
        for kind in ("im", "ex"):
            fo = compare(pick(f"{kind}_first_order"), pick(f"{kind}_full"))
            fs = compare(pick(f"{kind}_fixed_state"), pick(f"{kind}_full"))
            out["full"][kind] = {
                "pearson_first_order": fo["pearson"],
                "pearson_fixed_state": fs["pearson"],
                "first_order": fo,
                "fixed_state": fs,
                "by_group": {
                    g: {
                        "first_order": compare(pick(f"{kind}_first_order", g), pick(f"{kind}_full", g)),
                        "fixed_state": compare(pick(f"{kind}_fixed_state", g), pick(f"{kind}_full", g)),
                    }
                    for g in groups
                },
            }
    # mean change of r(chosen) − r(rejected) per group, for every column
    out["groups"] = {}
    for g in groups:
        rows = [r for r in records if r["group"] == g]
        ch, rj = rows[0::2], rows[1::2]
        out["groups"][g] = {
            kind: {
                col[len(kind) + 1 :]: float(np.mean([a[col] - b[col] for a, b in zip(ch, rj, strict=True)]))
                for col in cols
                if col.startswith(kind + "_")
            }
            for kind in ("im", "ex")
        }
    return out
