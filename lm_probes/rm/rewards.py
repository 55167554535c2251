"""The reward registry: every reward type, defined once, used by training, evaluation and the probe.

    from lm_probes.rm.rewards import REWARDS, get_reward_type, RewardParams
    rt = get_reward_type("im_rm")
    r = rt.score(model, encs, pad_id, RewardParams(beta=0.01, ref=ref_logprobs))    # (N,)
    loss = rt.loss(r[0::2], r[1::2]).mean()       # per pair → mean (rt.pair_loss(r, sc, params) in general)

A :class:`RewardType` says
  * how it turns a scored batch (``lm_probes.lm.scoring.Scored``) into rewards (``reward``);
  * what it reads: a linear head u (``uses_head``), reference log-probs (``uses_reference``), the
    LM's logits (``needs_logits``; EX-RMs skip the output head entirely);
  * which parameters training moves (``trainable``; default: all of the LM, plus u when it has one);
  * how a (prompt, response) is shown to the LM (``verbalize``; default: as is) and which next-token
    log-probs it reads (``answers``, e.g. the EX-GRM's "Yes" / "No");
  * its per-pair loss (``loss``; Bradley–Terry on the rewards unless the entry declares another, on
    ``loss_input`` where the loss reads more than the reward: the EX-GRM's cross-entropy needs P(No));
  * its fixed-state prediction of a one-step change (theory/README.md §3), where one exists, and what
    that setting trains (``fixed_state_moves``: "head" = u, "unembedding" = the output matrix W);
  * optionally the per-token-pair decomposition of that prediction (``contributions``);
  * optionally the split of a reward into per-token terms that sum to it (``token_rewards``).

A new reward type is one :func:`register` call; ``rmgap train --objective``, the experiments and
``rmgap probe --rewards`` pick it up from here (tests/rm/test_rewards.py adds a toy one).

Registered (theory/README.md §1, §5):
    ex_rm         r = ⟨u, h_last⟩                 linear head on the last response token's state
    ex_rm_mean    r = ⟨u, mean_k h_k⟩             head on the mean of the response's states
    im_rm         r = β (ln π_θ(y|x) − ln π_ref(y|x))    DPO's implicit reward
    im_rm_no_ref  r = β ln π_θ(y|x)               implicit reward without a reference model
    ex_grm        r = P("Yes" | verification prompt)   explicit generative RM, cross-entropy loss
    im_rm_mean    r = β mean_k (ln π_θ − ln π_ref)(y_k|·)   length-normalised implicit RM (issue 12)
    im_rm_mean_no_ref  r = β mean_k ln π_θ(y_k|·)   the same without reference (SimPO's reward)
    hybrid        r = ⟨u, h_last⟩ + β (ln π_θ − ln π_ref)   EX head and IM reward on one backbone
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from lm_probes.common import Registry
from lm_probes.lm.encoding import Encoded
from lm_probes.lm.scoring import Scored, score
from lm_probes.lm.states import ResponseStates
from theory import (
    ex_reward_change,
    ex_reward_change_along,
    im_reward_change_along,
    im_reward_change_batch,
    im_token_contributions,
)


@dataclass(frozen=True)
class RewardParams:
    """What a reward needs besides the LM: β, the head u (D,), ln π_ref (N,) and the token ids of the
    type's ``answers`` (:func:`answer_ids`), where used."""

    beta: float = 0.01
    head: torch.Tensor | None = None
    ref: torch.Tensor | None = None
    answer_ids: tuple[int, ...] | None = None


def bradley_terry(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Per-pair Bradley–Terry loss −ln σ(r+ − r−) = softplus(r− − r+), (N,) → (N,)."""
    return torch.nn.functional.softplus(r_rejected - r_chosen)


def initial_head(hidden_size: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    """The EX head's initial value u0 (D,): N(0, 1/D) entries drawn in float32 from ``seed``, then cast
    to ``dtype``, so the same seed gives the same head in every dtype, in training and in the probe.
    (The draw matters: on the Persona cpu preset the EX-RM's paraphrase accuracy depends on u0, see
    paper_notes.md; vary it alone with ``--head-seed``.)"""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(hidden_size, generator=gen) / math.sqrt(hidden_size)).to(dtype)


FixedState = Callable[..., np.ndarray]  # (bars, plus, minus, *, beta, lr, g) → (N,)


@dataclass(frozen=True)
class RewardType:
    name: str
    summary: str
    reward: Callable[[Scored, RewardParams], torch.Tensor]
    uses_head: bool = False
    uses_reference: bool = False
    needs_logits: bool = True
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = bradley_terry
    fixed_state: FixedState | None = None
    fixed_state_moves: str | None = None  # "head" or "unembedding"
    contributions: Callable | None = None  # (bar, plus, minus, *, beta, lr, g) → (C+, C−)
    # the fixed-state change along a given step of what fixed_state_moves names (theory.adam; Adam's
    # step is not −η∇ℓ): (bars, delta (D,) or (V, D), beta) → (N,)
    fixed_state_along: Callable[[list, np.ndarray, float], np.ndarray] | None = None
    # per-token split of the reward, where it is a sum over response tokens:
    # (token_logprob (K,), ref_token_logprob (K,) or None, beta) → (K,) summing to the reward
    token_rewards: Callable[[np.ndarray, np.ndarray | None, float], np.ndarray] | None = None
    # (prompt, response) → the (prompt, response) the LM scores; None: as is
    verbalize: Callable[[str, str], tuple[str, str]] | None = None
    answers: tuple[str, ...] = ()  # single tokens whose log-probs at the answer position are read
    # what the loss reads instead of the reward: (Scored, RewardParams) → (N, ...) per encoding
    loss_input: Callable[[Scored, RewardParams], torch.Tensor] | None = None

    def __post_init__(self):
        if (self.fixed_state is None) != (self.fixed_state_moves is None):
            raise ValueError(f"{self.name}: fixed_state and fixed_state_moves come together")
        if self.fixed_state_moves not in (None, "head", "unembedding"):
            raise ValueError(f"{self.name}: fixed_state_moves must be 'head' or 'unembedding'")
        if self.fixed_state_moves == "head" and not self.uses_head:
            raise ValueError(f"{self.name}: a fixed-state step on the head needs uses_head")

    def score(self, model, encs: list[Encoded], pad_id: int, params: RewardParams) -> torch.Tensor:
        """Rewards (N,) of ``encs`` through the one scoring path (differentiable)."""
        return self.score_with(model, encs, pad_id, params)[0]

    def score_with(
        self, model, encs, pad_id: int, params: RewardParams, mode: str = "auto"
    ) -> tuple[torch.Tensor, Scored]:
        """Rewards (N,) and the :class:`Scored` batch they were computed from (``mode``: of
        lm_probes.lm.scoring.score)."""
        answers = params.answer_ids if self.answers else None
        if self.answers and answers is None:
            raise ValueError(f"{self.name}: RewardParams.answer_ids is needed (rewards.answer_ids)")
        sc = score(model, encs, pad_id, need_logits=self.needs_logits, answer_ids=answers, mode=mode)
        return self.reward(sc, params), sc

    def loss_values(self, r: torch.Tensor, sc: Scored, params: RewardParams) -> torch.Tensor:
        """What :attr:`loss` reads for each encoding: the rewards ``r`` (N,), or ``loss_input``."""
        return r if self.loss_input is None else self.loss_input(sc, params)

    def pair_loss(self, r: torch.Tensor, sc: Scored, params: RewardParams) -> torch.Tensor:
        """Per-pair loss (N/2,) of a batch scored as (chosen, rejected) interleaved."""
        q = self.loss_values(r, sc, params)
        return self.loss(q[0::2], q[1::2])

    def trainable(self, model, head: torch.Tensor | None) -> list[torch.Tensor]:
        """The parameters training moves: every LM parameter, plus u when the type has a head."""
        params = list(model.parameters())
        return [*params, head] if self.uses_head else params


def answer_ids(tokenizer, answers: tuple[str, ...]) -> tuple[int, ...] | None:
    """The token id of each answer string (a reward type's ``answers``); each must be exactly one token
    of ``tokenizer``. None for a type without answers."""
    if not answers:
        return None
    ids = []
    for a in answers:
        tok = tokenizer(a, add_special_tokens=False)["input_ids"]
        if len(tok) != 1:
            raise ValueError(f"answer {a!r} is {len(tok)} tokens for this tokenizer; the EX-GRM needs one")
        if tok[0] == getattr(tokenizer, "unk_token_id", None):
            raise ValueError(f"answer {a!r} is the unknown token for this tokenizer")
        ids.append(tok[0])
    return tuple(ids)


REWARDS: Registry = Registry("reward type")


def register(rt: RewardType, *, replace: bool = False) -> RewardType:
    """Add ``rt`` to the registry (``replace=True`` to redefine a name)."""
    return REWARDS.add(rt, replace=replace)


def get_reward_type(name: str) -> RewardType:
    return REWARDS.lookup(name)


# --- the registered types ---------------------------------------------------------------------------


def linear_head_type(name: str, summary: str, state: str) -> RewardType:
    """An explicit RM r = ⟨u, s⟩ on the scored state ``state`` ("last_hidden" or "mean_hidden"), with the
    fixed-state prediction of theory.dynamics.ex_reward_change on the same state."""

    def reward(sc: Scored, p: RewardParams) -> torch.Tensor:
        return getattr(sc, state) @ p.head

    def fixed_state(bars: list[ResponseStates], plus, minus, *, beta, lr, g):
        h = np.stack([getattr(b, state) for b in bars])
        return ex_reward_change(h, getattr(plus, state), getattr(minus, state), lr=lr, g=g)

    def along(bars: list[ResponseStates], delta: np.ndarray, beta: float) -> np.ndarray:
        return ex_reward_change_along(np.stack([getattr(b, state) for b in bars]), delta)

    return RewardType(
        name,
        summary,
        reward,
        uses_head=True,
        needs_logits=False,
        fixed_state=fixed_state,
        fixed_state_moves="head",
        fixed_state_along=along,
    )


def log_ratio_type(name: str, summary: str, reference: bool) -> RewardType:
    """An implicit RM r = β (ln π_θ − ln π_ref) (or β ln π_θ without reference), with the fixed-state
    prediction of theory.dynamics.im_reward_change_batch and its per-token-pair decomposition; both
    variants have the same gradient, since π_ref does not depend on θ."""

    def reward(sc: Scored, p: RewardParams) -> torch.Tensor:
        return p.beta * (sc.logprob - p.ref.to(sc.logprob.dtype) if reference else sc.logprob)

    def fixed_state(bars: list[ResponseStates], plus, minus, *, beta, lr, g):
        return im_reward_change_batch(
            [b.states for b in bars], plus.states, minus.states, beta=beta, lr=lr, g=g
        )

    def contributions(bar: ResponseStates, plus, minus, *, beta, lr, g):
        return im_token_contributions(bar.states, plus.states, minus.states, beta=beta, lr=lr, g=g)

    def token_rewards(lp: np.ndarray, ref: np.ndarray | None, beta: float) -> np.ndarray:
        return beta * (lp - ref if reference else lp)  # β (ln π_θ(y_k|·) − ln π_ref(y_k|·))

    def along(bars: list[ResponseStates], delta: np.ndarray, beta: float) -> np.ndarray:
        return im_reward_change_along([b.states for b in bars], delta, beta=beta)

    return RewardType(
        name,
        summary,
        reward,
        uses_reference=reference,
        fixed_state=fixed_state,
        fixed_state_moves="unembedding",
        contributions=contributions,
        token_rewards=token_rewards,
        fixed_state_along=along,
    )


register(
    linear_head_type("ex_rm", "explicit RM: r = ⟨u, h⟩ on the last response token's state", "last_hidden")
)
register(
    linear_head_type(
        "ex_rm_mean", "explicit RM on the mean response state: r = ⟨u, mean_k h_k⟩", "mean_hidden"
    )
)
register(log_ratio_type("im_rm", "implicit (DPO) RM: r = β ln π_θ(y|x)/π_ref(y|x), summed over tokens", True))
register(log_ratio_type("im_rm_no_ref", "implicit RM without reference: r = β ln π_θ(y|x)", False))


def mean_log_ratio_type(name: str, summary: str, reference: bool) -> RewardType:
    """A length-normalised implicit RM r = (β/K) Σ_k (ln π_θ − ln π_ref)(y_k|·) (SimPO-style; without
    reference r = (β/K) ln π_θ(y|x)): every response's gradient is its summed one divided by its length
    K, so long responses no longer carry more reward mass per preference (no fixed-state prediction)."""

    def reward(sc: Scored, p: RewardParams) -> torch.Tensor:
        lp = sc.logprob - p.ref.to(sc.logprob.dtype) if reference else sc.logprob
        return p.beta * lp / sc.n_tokens.to(lp.dtype)

    def token_rewards(lp, ref, beta: float):
        return beta * (lp - ref if reference else lp) / len(lp)  # sums to the reward

    return RewardType(name, summary, reward, uses_reference=reference, token_rewards=token_rewards)


register(
    mean_log_ratio_type(
        "im_rm_mean", "length-normalised implicit RM: r = β mean_k ln π_θ(y_k|·)/π_ref(y_k|·)", True
    )
)
register(
    mean_log_ratio_type(
        "im_rm_mean_no_ref",
        "length-normalised implicit RM without reference: r = β mean_k ln π_θ(y_k|·)",
        False,
    )
)


def _hybrid_reward(sc: Scored, p: RewardParams) -> torch.Tensor:
    return sc.last_hidden @ p.head + p.beta * (sc.logprob - p.ref.to(sc.logprob.dtype))


register(
    RewardType(
        "hybrid",
        "hybrid RM: r = ⟨u, h_last⟩ + β ln π_θ(y|x)/π_ref(y|x), EX head and IM reward on one backbone",
        _hybrid_reward,
        uses_head=True,
        uses_reference=True,
    )
)


# --- the explicit generative RM (EX-GRM) --------------------------------------------------------------

VERIFICATION = "Question: {prompt}\nAnswer: {response}\nVerification: Is the answer correct (Yes/No)?"


def verification_prompt(prompt: str, response: str) -> tuple[str, str]:
    """The EX-GRM's input (the authors' template, a user message; the chat template adds the generation
    prompt) and the answer it scores, "Yes"."""
    return VERIFICATION.format(prompt=prompt, response=response), "Yes"


def _ex_grm_reward(sc: Scored, p: RewardParams) -> torch.Tensor:
    return sc.answer_logprob[:, 0].exp()  # P("Yes"), the probability (not log-odds)


def _ex_grm_loss_input(sc: Scored, p: RewardParams) -> torch.Tensor:
    return sc.answer_logprob  # (N, 2): ln P(Yes), ln P(No)


def _ex_grm_loss(q_chosen: torch.Tensor, q_rejected: torch.Tensor) -> torch.Tensor:
    return -q_chosen[:, 0] - q_rejected[:, 1]  # −ln P(Yes | chosen) − ln P(No | rejected)


register(
    RewardType(
        "ex_grm",
        "explicit generative RM: r = P('Yes' | 'Question: x Answer: y Verification: ...?'), cross-entropy",
        _ex_grm_reward,
        loss=_ex_grm_loss,
        verbalize=verification_prompt,
        answers=("Yes", "No"),
        loss_input=_ex_grm_loss_input,
    )
)
