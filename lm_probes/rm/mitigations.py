"""Mitigations of the IM-RM's token-level brittleness (theory/README.md §6): each one is a reward type
of the registry plus training options (``lm_probes.rm.config.TrainConfig`` fields) plus, for two of them,
the training pairs' rewrites (``Pair.rewrite``). Defined once here; used by training, by the one-step
prediction and by ``rmgap mitigations`` / ``rmgap shifts --mitigation``.

    from lm_probes.rm.mitigations import MITIGATIONS
    m = MITIGATIONS["token_dropout"]
    train_reward_model(lm, m.train_pairs(pairs), evals, m.config(TrainConfig(lr=1e-5)))

The mechanics (each tested on a tiny model in tests/rm/test_mitigations.py):
  token_dropout_reward   Σ_k m_k t_k / (1 − p), m_k ~ Bernoulli(1 − p): unbiased for Σ_k t_k
  consistency_penalty    ½[(r(y+) − r(ỹ+))² + (r(y−) − r(ỹ−))²] per pair (ỹ: the rewrite)
  unembedding_penalty    ‖W − W₀‖² of the output head (still tied where tied: the one matrix is pulled)
  freeze                 "unembedding": W fixed, the body trains; "representations": only W trains
  augmented_pairs        the training pairs followed by their rewrites as pairs of their own
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from lm_probes.data.pairs import Pair
from lm_probes.lm.loading import untie_output_head
from lm_probes.rm.config import FREEZE, TrainConfig


@dataclass(frozen=True)
class Mitigation:
    name: str
    objective: str  # a reward type of lm_probes.rm.rewards
    summary: str
    predicts: str  # what theory/README.md §6 says it changes, before measuring
    options: dict = field(default_factory=dict)  # TrainConfig fields
    augment: bool = False  # train on the rewrites too (extra pairs)

    @property
    def uses_rewrites(self) -> bool:
        return self.augment or self.options.get("consistency", 0) > 0

    def config(self, base: TrainConfig) -> TrainConfig:
        """``base`` (the preset's training settings) with this mitigation's reward type and options."""
        return replace(base, objective=self.objective, **self.options)

    def train_pairs(self, pairs: list[Pair]) -> list[Pair]:
        """The pairs this mitigation trains on: with ``augment``, the rewrites added."""
        return augmented_pairs(pairs) if self.augment else pairs


MITIGATIONS: dict[str, Mitigation] = {
    m.name: m
    for m in (
        Mitigation(
            "none",
            "im_rm",
            "the plain IM-RM (DPO's implicit reward)",
            "baseline: a step moves ȳ through ρ-weighted hidden-state similarities of its tokens",
        ),
        Mitigation(
            "ex_rm",
            "ex_rm",
            "the plain EX-RM (linear head on the last state): the reference point",
            "a step moves ȳ through ⟨h̄, h+ − h−⟩ of the last states only",
        ),
        Mitigation(
            "token_dropout",
            "im_rm",
            "each response token's log-ratio term dropped with p = 0.3, rescaled",
            "first step: none's in expectation (all masks give r = 0 at θ₀, the rescaled sum is unbiased); "
            "later: no single token's ρ term can carry the margin alone",
            {"token_dropout": 0.3},
        ),
        Mitigation(
            "augmentation",
            "im_rm",
            "each training pair's rewrite added as a training pair",
            "adds the rewrite's own token terms to the gradient: ρ terms of ỹ± now push the paraphrases",
            augment=True,
        ),
        Mitigation(
            "consistency",
            "im_rm",
            "+ λ·½[(r(y+) − r(ỹ+))² + (r(y−) − r(ỹ−))²], λ = 1",
            "first step: none's (the term and its gradient are 0 while all rewards are 0); later it "
            "moves rewrites with their originals",
            {"consistency": 1.0},
        ),
        Mitigation(
            "frozen_unembedding",
            "im_rm",
            "the output head W fixed (untied), the body trains",
            "removes the ρ·⟨W-row⟩ terms (Theorem 1's token-similarity channel through W); the hidden-state "
            "channel remains",
            {"freeze": "unembedding"},
        ),
        Mitigation(
            "frozen_representations",
            "im_rm",
            "only the output head W trains (Theorem 2's setting)",
            "keeps only the fixed-state ρ terms: tokens absent from training move only through "
            "the hidden-state similarity of their predicting states",
            {"freeze": "representations"},
        ),
        Mitigation(
            "unembedding_l2",
            "im_rm",
            "+ λ‖W − W₀‖², λ = 10, on the output head (tied heads stay tied)",
            "first step: none's (the pull is 0 at W₀); later it damps the W terms",
            {"unembedding_l2": 10.0},
        ),
        Mitigation(
            "length_normalised",
            "im_rm_mean",
            "r = β mean_k ln π_θ/π_ref (SimPO-style)",
            "each response's gradient divided by its length: shifts weight between short and long "
            "responses, not between shared and unshared tokens",
        ),
        Mitigation(
            "length_normalised_no_ref",
            "im_rm_mean_no_ref",
            "r = β mean_k ln π_θ (SimPO's reward)",
            "same gradient as length_normalised (π_ref is constant); rewards differ by the reference's "
            "mean log-prob",
        ),
        Mitigation(
            "hybrid",
            "hybrid",
            "r = ⟨u, h_last⟩ + β ln π_θ/π_ref on one backbone",
            "adds the EX-RM's hidden-state channel to the IM-RM's: paraphrases move with ⟨h̄, h+ − h−⟩",
        ),
    )
}


def get_mitigation(name: str) -> Mitigation:
    if name not in MITIGATIONS:
        raise ValueError(f"unknown mitigation {name!r}; known: {', '.join(MITIGATIONS)}")
    return MITIGATIONS[name]


def augmented_pairs(pairs: list[Pair]) -> list[Pair]:
    """The pairs followed by each rewrite as a pair of its own (same prompt and group)."""
    extra = [
        Pair(p.prompt, *p.rewrite, p.group, f"{p.where} (rewrite)") for p in pairs if p.rewrite is not None
    ]
    if not extra:
        raise ValueError("augmentation needs training pairs with rewrites (Pair.rewrite); these have none")
    return [*pairs, *extra]


def token_dropout_reward(terms: torch.Tensor, keep: torch.Tensor, p: float) -> torch.Tensor:
    """Σ_k keep_k · terms_k / (1 − p): a reward's per-token terms (K,) with the dropped ones removed and
    the kept ones rescaled, so that E[·] over keep_k ~ Bernoulli(1 − p) is Σ_k terms_k."""
    return (terms * keep.to(terms.dtype)).sum() / (1.0 - p)


def token_keep_masks(lengths: list[int], p: float, generator: torch.Generator) -> list[torch.Tensor]:
    """One (K_i,) bool mask per response, each token kept with probability 1 − p (seeded)."""
    return [torch.rand(k, generator=generator, dtype=torch.float64) >= p for k in lengths]


def consistency_penalty(r: torch.Tensor, r_rewrite: torch.Tensor) -> torch.Tensor:
    """Per pair ½[(r(y+) − r(ỹ+))² + (r(y−) − r(ỹ−))²] of interleaved (chosen, rejected) rewards (2N,)
    of the pairs and of their rewrites → (N,)."""
    d = (r - r_rewrite) ** 2
    return 0.5 * (d[0::2] + d[1::2])


def freeze(model, what: str | None) -> None:
    """``"unembedding"``: the output head W (untied first) stops training; ``"representations"``: every
    LM parameter but W stops training (an EX head u, outside the LM, still trains)."""
    if what is None:
        return
    if what not in FREEZE:
        raise ValueError(f"freeze must be one of {', '.join(FREEZE)}, got {what!r}")
    untie_output_head(model)
    head = model.get_output_embeddings().weight
    if what == "unembedding":
        head.requires_grad_(False)
    else:
        for p in model.parameters():
            p.requires_grad_(p is head)


def unembedding_penalty(model, w0: torch.Tensor) -> torch.Tensor:
    """‖W − W₀‖² of the output head (Frobenius; W₀ its value before training)."""
    return ((model.get_output_embeddings().weight - w0) ** 2).sum()
