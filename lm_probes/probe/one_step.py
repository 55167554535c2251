"""Which responses does one preference update move, by how much, and why? (theory/README.md §3 on
real LMs). Computation only; ``lm_probes.reports`` writes and prints the report.

For training triple(s) (x, y+, y−) and evaluation pairs (x̄, ȳ+, ȳ−) this computes, for every reward
type asked for (``ProbeConfig.rewards``, entries of the reward registry; default im_rm and ex_rm, the
heads of explicit types starting from ``initial_head(D, head_seed)`` and π_ref = the loaded LM):

  fixed_state   the type's fixed-state prediction (theory.dynamics with the LM's own states and
                logits: only the head u or the unembedding W moves), where the type has one;
  first_order   exact first order over all trainable parameters, η·⟨∇_θ r̄, −∇_θ ℓ⟩ (forward-mode JVP);
  head_only     observed after one real SGD step on what the fixed-state setting trains (u, or an
                untied copy of the output head W, substituted by a functional call), re-scored;
  full          observed after one real SGD step on all trainable parameters, re-scored.

``ProbeConfig(lora="r,alpha,targets")`` steps LoRA adapters alone (lm_probes.rm.lora; injected for the
run, B = 0, and removed after it): first_order and full are over the adapters (and u); no fixed_state or
head_only column (theory/README.md §3, "Under LoRA"; theory.lora gives first order in closed form).

``ProbeConfig(optimizer="adam")`` predicts and takes Adam's first step, Δθ = −η·g/(|g| + ε) (theory.adam),
instead of −η·g: first_order is the JVP along it, head_only and full take it, and fixed_state is the
closed form along the head-only step (``RewardType.fixed_state_along``: still linear in Δu, ΔW; no
per-token contributions, which are SGD's).

ℓ is the mean of the type's per-pair loss over the training triples; g = σ(r− − r+) at θ0 (½ for an
untrained IM-RM, whose rewards are all 0). Everything is restored after each step, so every column
refers to the same θ0 (the live model's weights are never edited: stepped weights enter functional
calls). Records carry each type's reward at θ0 (``<type>_reward``) and its changes (``<type>_<column>``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.func import functional_call, jvp

from lm_probes.common import Timer, progress
from lm_probes.data.pairs import DataError, Pair, encode_pairs
from lm_probes.lm.encoding import pad_id_of
from lm_probes.lm.loading import LoadedLM
from lm_probes.lm.scoring import HeadMismatchError, Scorer, prompt_groups
from lm_probes.lm.states import extract_states, stack_states
from lm_probes.probe.appendix import contribution_rows, max_margin_check
from lm_probes.probe.summary import summarise
from lm_probes.rm.config import check_settings
from lm_probes.rm.lora import apply_lora, is_adapter, parse_lora, remove_lora
from lm_probes.rm.rewards import RewardParams, answer_ids, get_reward_type, initial_head
from theory import adam_first_step, bt_grad_scale


@dataclass(frozen=True)
class ProbeConfig:
    beta: float = 0.01
    lr: float = 1e-3
    chat_template: bool = True
    batch_size: int = 16
    modes: tuple = ("head_only", "full")
    head_seed: int = 0
    rewards: tuple = ("im_rm", "ex_rm")
    progress: bool = True
    optimizer: str = "sgd"  # the step predicted and taken: "sgd" (−η∇ℓ) or "adam" (its first step)
    adam_eps: float = 1e-8
    lora: str | None = None  # "r,alpha,targets": the step is on LoRA adapters alone (lm_probes.rm.lora)

    def __post_init__(self):  # (the numeric ranges training has: lr, beta, batch_size, head_seed)
        check_settings(self)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if not self.adam_eps > 0:
            raise ValueError(f"adam_eps must be > 0, got {self.adam_eps}")
        if self.lora is not None:
            parse_lora(self.lora)

    def step(self, grad: torch.Tensor) -> torch.Tensor:
        """The optimiser's first step per unit learning rate, given the gradient: Δθ = −η·step(∇ℓ)."""
        return grad if self.optimizer == "sgd" else adam_first_step(grad, self.adam_eps)


OPTIMIZERS = ("sgd", "adam")


class _Run:
    """One probe run's shared state: the model, its encodings and states at θ0, the timer."""

    def __init__(self, lm: LoadedLM, cfg: ProbeConfig, train: list[Pair], evals: list[Pair], timer=None):
        self.lm, self.cfg, self.model = lm, cfg, lm.model
        self.pad, self.T = pad_id_of(lm.tokenizer), timer or Timer()
        with self.T("tokenise"):
            tr = self.encode(train)
            if tr.dropped["identical"]:
                raise DataError(f"{tr.dropped['identical'][0]}: a training triple must have two responses")
            ev = self.encode(evals)
            if not ev.encodings:
                why = f"its {len(evals)} pair(s) all have two identical responses" if evals else "it is empty"
                raise DataError(f"no evaluation pair to probe: {why}")
        self.tr_encs = [e for pr in tr.encodings for e in pr]
        self.ev_encs = [e for pr in ev.encodings for e in pr]
        self.train, self.evals, self.dropped = train, ev.kept, ev.dropped["identical"]
        self._encs = {None: (self.tr_encs, self.ev_encs)}  # by the reward type's verbalize
        self._answers: dict[str, tuple | None] = {}  # by reward type: its answers' token ids
        with self.T("model: states at θ0"):
            # logits ≠ W·h (Gemma-2's soft-capping, a scale, a bias): no fixed-state prediction and no
            # head-only step, whose formulas assume W·h; first order and the full step still apply
            self.not_Wh = None
            try:
                self.ev_states = extract_states(self.model, self.ev_encs, self.pad)
            except HeadMismatchError as exc:
                self.not_Wh = str(exc)
                self.ev_states = extract_states(self.model, self.ev_encs, self.pad, verify_head=False)
            tr = extract_states(self.model, self.tr_encs, self.pad, verify_head=False) if self.tr_encs else []
            self.tr_states = tr
        lora = "LoRA: the step moves the adapters (and u), not the fixed-state setting's u or W alone"
        self.skipped = self.not_Wh or (lora if cfg.lora else None)  # why no fixed_state / head_only
        self.n = len(train)
        self.scorer = Scorer(self.model)  # (functional calls: parameters substituted by name)

    def encode(self, pairs, verbalize=None):
        return encode_pairs(
            self.lm.tokenizer,
            pairs,
            chat_template=self.cfg.chat_template,
            max_length=self.lm.info.get("max_positions"),
            too_long="raise",
            verbalize=verbalize,
        )

    def encs_for(self, rt) -> tuple[list, list]:
        """(train, evaluation) encodings as ``rt`` shows them to the LM (its ``verbalize``), in the
        order of the shared ones (the same pairs: a verbalised pair differs where its responses do)."""
        if rt.verbalize not in self._encs:
            self._encs[rt.verbalize] = tuple(
                [e for pr in self.encode(pairs, rt.verbalize).encodings for e in pr]
                for pairs in (self.train, self.evals)
            )
        return self._encs[rt.verbalize]

    def params(self, rt, head, states, dtype) -> RewardParams:
        """RewardParams of ``rt`` for encodings whose θ0 states are ``states`` (ref = their ln π)."""
        ref = (
            torch.tensor([s.logprob for s in states], dtype=dtype, device=self.lm.device)
            if rt.uses_reference
            else None
        )
        if rt.name not in self._answers:
            self._answers[rt.name] = answer_ids(self.lm.tokenizer, rt.answers)
        return RewardParams(
            self.cfg.beta, None if head is None else head.to(dtype), ref, self._answers[rt.name]
        )

    def chunks(self, encs):
        """Index lists of encodings that share a prompt (so score() runs each prompt once)."""
        return prompt_groups(encs, self.cfg.batch_size)

    def _scored(self, rt, encs, p: RewardParams, weights: dict | None, tie: bool):
        """(rewards, Scored) of ``encs`` under the model's weights, or with ``weights`` (named
        ``model.<parameter>``) substituted by a functional call; the live model is never edited.
        ``tie=False`` substitutes a tied head alone (the head-only step on an untied copy of W)."""
        if weights is None:
            return rt.score_with(self.model, encs, self.pad, p)
        kw = {"need_logits": rt.needs_logits, "answer_ids": p.answer_ids}
        sc = functional_call(self.scorer, weights, (encs, self.pad), kw, tie_weights=tie, strict=False)
        return rt.reward(sc, p), sc

    @torch.no_grad()
    def rewards_after(self, rt, head, desc, weights: dict | None = None, tie: bool = True) -> np.ndarray:
        """Rewards (float64) of every evaluation response under the model's weights (or ``weights``)."""
        encs = self.encs_for(rt)[1]
        out = np.empty(len(encs))
        for idx in progress(self.chunks(encs), desc, enabled=self.cfg.progress):
            p = self.params(rt, head, [self.ev_states[i] for i in idx], self.lm.dtype)
            r, _ = self._scored(rt, [encs[i] for i in idx], p, weights, tie)
            out[idx] = r.double().cpu().numpy()
        return out

    def train_loss(self, rt, head, weights: dict | None = None, tie: bool = True):
        p = self.params(rt, head, self.tr_states, self.lm.dtype)
        r, sc = self._scored(rt, self.encs_for(rt)[0], p, weights, tie)
        return rt.pair_loss(r, sc, p).mean()

    def first_order(self, rt, tangents: dict, head, v_head) -> np.ndarray:
        """η·⟨∇ r̄, v⟩ for every evaluation response, v = −∇ℓ (forward-mode JVP, batched by prompt)."""
        params = {f"model.{n}": p.detach() for n, p in self.model.named_parameters() if n in tangents}
        tan = {f"model.{n}": t for n, t in tangents.items()}
        encs = self.encs_for(rt)[1]
        out = np.empty(len(encs))
        for idx in progress(self.chunks(encs), f"jvp {rt.name}", enabled=self.cfg.progress):
            chunk = [encs[i] for i in idx]
            p0 = self.params(rt, None, [self.ev_states[i] for i in idx], self.lm.dtype)

            def f(p, *h, chunk=chunk, p0=p0):
                ph = RewardParams(self.cfg.beta, h[0] if h else None, p0.ref, p0.answer_ids)
                return self._scored(rt, chunk, ph, p, tie=True)[0]

            if head is None:
                _, t = jvp(f, (params,), (tan,))
            else:
                _, t = jvp(f, (params, head.detach()), (tan, v_head))
            out[idx] = t.detach().double().cpu().numpy()
        return self.cfg.lr * out


def _output_head_name(model) -> str:
    """``model.<name>`` of the output head's weight (listed even where it is tied to the input one)."""
    head = model.get_output_embeddings()
    return next(f"model.{n}.weight" for n, m in model.named_modules() if m is head)


def _at_theta0(run: _Run, rt, head0) -> tuple[np.ndarray, np.ndarray]:
    """The type's rewards at θ0 of the training responses and of the evaluation ones."""
    if rt.verbalize is None and not rt.answers:  # from the shared states
        r_tr = rt.reward(stack_states(run.tr_states), run.params(rt, head0, run.tr_states, torch.float64))
        r0 = rt.reward(stack_states(run.ev_states), run.params(rt, head0, run.ev_states, torch.float64))
        return r_tr.numpy(), r0.numpy()
    with torch.no_grad():  # a type that reads its own input (the EX-GRM): scored at θ0
        p_tr = run.params(rt, head0, run.tr_states, run.lm.dtype)
        r_tr = rt.score(run.model, run.encs_for(rt)[0], run.pad, p_tr).double().cpu().numpy()
    return r_tr, run.rewards_after(rt, head0, f"{rt.name} at θ0")


def _fixed_state(run: _Run, rt, g: np.ndarray) -> tuple[np.ndarray, list]:
    """The fixed-state prediction summed over the triples, and its per-token contributions (or [])."""
    kw = dict(beta=run.cfg.beta, lr=run.cfg.lr / run.n)
    triples = [run.tr_states[2 * i : 2 * i + 2] for i in range(run.n)]
    col = sum(rt.fixed_state(run.ev_states, *t, **kw, g=float(g[i])) for i, t in enumerate(triples))
    contributions = []
    if rt.contributions is not None:
        for bar in run.ev_states:
            per_triple = []
            for i, t in enumerate(triples):
                c_plus, c_minus = rt.contributions(bar, *t, **kw, g=float(g[i]))
                per_triple.append({"plus": c_plus.tolist(), "minus": c_minus.tolist()})
            contributions.append(per_triple)
    return col, contributions


def _head_only(run: _Run, rt, head0, r0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Observed change after one real step (ProbeConfig.optimizer's) on what the fixed-state setting
    trains: the head u, or an untied copy of the output matrix W (substituted in a functional call);
    and that step Δu or ΔW (float64)."""
    lr = run.cfg.lr
    if rt.fixed_state_moves == "head":
        u = head0.clone().requires_grad_(True)
        sc_tr = stack_states(run.tr_states, dtype=run.lm.dtype)
        r = rt.reward(sc_tr, run.params(rt, u, run.tr_states, run.lm.dtype))
        (gu,) = torch.autograd.grad(rt.loss(r[0::2], r[1::2]).mean(), [u])
        delta = (-lr * run.cfg.step(gu)).detach()
        sc_ev = stack_states(run.ev_states)
        r1 = rt.reward(sc_ev, run.params(rt, head0 + delta, run.ev_states, torch.float64)).numpy()
        return r1 - r0, delta.double().cpu().numpy()
    name = _output_head_name(run.model)
    w = run.model.get_output_embeddings().weight.detach().clone().requires_grad_(True)
    (gw,) = torch.autograd.grad(run.train_loss(rt, None, {name: w}, tie=False), [w])
    delta = (-lr * run.cfg.step(gw)).detach()
    stepped = {name: (w + delta).detach()}
    r1 = run.rewards_after(rt, None, f"head-only {rt.name} step", stepped, tie=False)
    return r1 - r0, delta.double().cpu().numpy()


def _full(run: _Run, rt, head0, r0: np.ndarray) -> dict[str, np.ndarray]:
    """Exact first order over every parameter (forward-mode JVP along the step: −∇ℓ, or Adam's first
    step) and the observed change after that real step on all of them (the stepped weights
    substituted in a functional call)."""
    named = [(n, p) for n, p in run.model.named_parameters() if not run.cfg.lora or is_adapter(n)]
    params = [p for _, p in named]
    u = None if head0 is None else head0.clone().requires_grad_(True)
    with run.T("model: full-parameter gradient"):
        for p in params:
            p.requires_grad_(True)
        loss = run.train_loss(rt, u)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the {rt.name} training loss is {loss.item()} at θ0")
        # (a type that reads no logits leaves an untied output head out of the graph: its gradient is 0)
        wrt = params + ([u] if u is not None else [])
        grads = torch.autograd.grad(loss, wrt, allow_unused=True)
        grads = [torch.zeros_like(x) if g is None else g for x, g in zip(wrt, grads, strict=True)]
        for p in params:
            p.requires_grad_(False)
    steps = [run.cfg.step(gr) for gr in grads]  # Δθ / (−η): the gradient, or Adam's g / (|g| + ε)
    del grads  # (memory: one parameter-sized buffer lives from here on, the step's; the 1B probe's peak)
    s_head = steps.pop() if u is not None else None
    cols = {}
    with run.T("model: first-order JVP"):  # along +step, negated: the JVP is linear in its tangent
        tangents = {nm: st for (nm, _), st in zip(named, steps, strict=True)}
        cols["first_order"] = -run.first_order(rt, tangents, head0, s_head)
        del tangents
    with run.T("model: full-parameter step"), torch.no_grad():
        u1 = None if u is None else head0 - run.cfg.lr * s_head
        lr = run.cfg.lr
        stepped = {f"model.{nm}": _stepped(p, st, lr) for (nm, p), st in zip(named, steps, strict=True)}
        del steps
        cols["full"] = run.rewards_after(rt, u1, f"full {rt.name} step", stepped) - r0
    return cols


def _stepped(p: torch.Tensor, step: torch.Tensor, lr: float) -> torch.Tensor:
    """p − lr·step, written over ``step``'s own memory where it has p's layout (no new buffer)."""
    if step.shape == p.shape and step.dtype == p.dtype and step.is_contiguous():
        return step.mul_(-lr).add_(p)
    return p - lr * step


def _columns(run: _Run, rt, head0) -> tuple[dict, np.ndarray, list, list]:
    """One reward type's columns, its θ0 rewards, g per triple, and per-token contributions (or [])."""
    r_tr, r0 = _at_theta0(run, rt, head0)
    g = bt_grad_scale(r_tr[0::2], r_tr[1::2])
    cols, contributions = {}, []
    sgd, wh = run.cfg.optimizer == "sgd", run.skipped is None
    if rt.fixed_state is not None and sgd and wh:
        with run.T("dynamics arithmetic"):
            cols["fixed_state"], contributions = _fixed_state(run, rt, g)
    adam_fixed = not sgd and rt.fixed_state_along is not None and wh
    if ("head_only" in run.cfg.modes or adam_fixed) and rt.fixed_state_moves is not None and wh:
        with run.T("model: head-only steps"):
            observed, delta = _head_only(run, rt, head0, r0)
        if "head_only" in run.cfg.modes:
            cols["head_only"] = observed
        if adam_fixed:  # (Adam's step is not linear in ∇ℓ: the closed form along the step it takes)
            with run.T("dynamics arithmetic"):
                cols["fixed_state"] = rt.fixed_state_along(run.ev_states, delta, run.cfg.beta)
    if "full" in run.cfg.modes:
        cols.update(_full(run, rt, head0, r0))
    return cols, r0, [float(x) for x in g], contributions


def run_probe(
    lm: LoadedLM,
    train: list[Pair],
    evals: list[Pair],
    cfg: ProbeConfig = ProbeConfig(),
    margin: list[Pair] | None = None,
    timer: Timer | None = None,
) -> dict:
    """Run the probe → {"records": [per evaluation response], "summary": {...}, "contributions": [...]}.
    ``timer``: a Timer to time the phases with (its ``current`` names the phase in progress)."""
    if not train:
        raise ValueError("run_probe needs at least one training triple")
    if not evals:
        raise ValueError("run_probe needs at least one evaluation pair")
    types = [get_reward_type(name) for name in cfg.rewards]
    requires_grad = [p.requires_grad for p in lm.model.parameters()]
    cols, rewards0, gs, contributions, applied = {}, {}, {}, {}, False
    try:
        if cfg.lora:  # adapters injected for the probe (A seeded by head_seed, B = 0), removed after it
            with torch.random.fork_rng():
                torch.manual_seed(cfg.head_seed)
                applied = bool(apply_lora(lm.model, parse_lora(cfg.lora)))
        run = _Run(lm, cfg, train, evals, timer)
        if not run.ev_encs:
            raise DataError(f"every evaluation pair has identical responses ({run.dropped[0]})")
        for p in lm.model.parameters():
            p.requires_grad_(False)
        for rt in types:
            head0 = initial_head(lm.info["hidden_size"], cfg.head_seed, lm.dtype) if rt.uses_head else None
            c, rewards0[rt.name], gs[rt.name], contributions[rt.name] = _columns(run, rt, head0)
            cols.update({f"{rt.name}_{k}": v for k, v in c.items()})
    finally:
        if applied:
            remove_lora(lm.model)
        for p, flag in zip(lm.model.parameters(), requires_grad, strict=True):
            p.requires_grad_(flag)
    records = []
    for j, e in enumerate(run.ev_encs):
        pair = run.evals[j // 2]
        rec = dict(
            group=pair.group,
            where=pair.where,
            role="chosen" if j % 2 == 0 else "rejected",
            response=pair.chosen if j % 2 == 0 else pair.rejected,
            n_tokens=e.response_len,
            boundary_merged=e.boundary_merged,
        )
        rec.update({f"{name}_reward": float(r[j]) for name, r in rewards0.items()})
        rec.update({k: float(v[j]) for k, v in cols.items()})
        records.append(rec)
    summary = summarise(records, [rt.name for rt in types])
    summary.update(
        timings=run.T.seconds,
        max_margin_fraction_positive=max_margin_check(run, margin) if margin else None,
        boundary_merged=[e.where for e in run.tr_encs + run.ev_encs if e.boundary_merged],
        dropped_identical=run.dropped,
        n_train_triples=run.n,
        fixed_state_skipped=run.skipped,  # why there is no fixed_state / head_only column, if none
        n_eval_pairs=len(run.evals),
        config=asdict(cfg),
        model=lm.info,
        g=gs,
    )
    return {"records": records, "summary": summary, "contributions": contribution_rows(run, contributions)}
