"""The reward model being trained, as one torch module: the LM plus, for types with a head, u; its
rewards, training losses and reference tables (lm_probes.rm.trainer trains it; DDP / FSDP wrap it).

    rm = RewardModel(lm, TrainConfig(objective="im_rm"))     # a LoadedLM; lm_probes.rm.config.TrainConfig
    rm.fill_reference(encodings)                              # ln π_ref from the initial weights
    rm.rewards(encodings)                                     # (N,) rewards of the registered type
    rm(pairs)                                                 # a micro-batch's training loss
"""

from __future__ import annotations

import numpy as np
import torch

from lm_probes.distributed import Runtime
from lm_probes.lm.encoding import Encoded, pad_id_of
from lm_probes.lm.loading import LoadedLM
from lm_probes.lm.scoring import head_is_linear, score
from lm_probes.rm.config import TrainConfig
from lm_probes.rm.evaluation import eval_chunks
from lm_probes.rm.lora import apply_lora, parse_lora
from lm_probes.rm.mitigations import (
    consistency_penalty,
    freeze,
    token_dropout_reward,
    token_keep_masks,
    unembedding_penalty,
)
from lm_probes.rm.rewards import RewardParams, RewardType, answer_ids, get_reward_type, initial_head


class RewardModel(torch.nn.Module):
    """The LM plus, for types with a head, u; ``rewards(encs)`` gives r for each encoding. It reads of
    ``cfg`` the reward's β, the head's seed and the mitigations' options; ``rt``: the reward type the
    run resolved (default: the one ``cfg.objective`` names)."""

    def __init__(
        self, lm: LoadedLM, cfg: TrainConfig, runtime: Runtime | None = None, rt: RewardType | None = None
    ):
        super().__init__()
        self.runtime = runtime or Runtime()  # (lm_probes.distributed: shards and gathers; one process)
        self.rt = rt or get_reward_type(cfg.objective)
        self.lm, self.cfg, self.model = lm, cfg, lm.model
        self.pad = pad_id_of(lm.tokenizer)
        head_is_linear(self.model)  # (checked now by every process: its passes, once sharded, are collective)
        head_seed = cfg.seed if cfg.head_seed is None else cfg.head_seed
        head = initial_head(lm.info["hidden_size"], head_seed, lm.dtype).to(lm.device)
        self.u = torch.nn.Parameter(head) if self.rt.uses_head else None
        self.answer_ids = answer_ids(lm.tokenizer, self.rt.answers)
        freeze(self.model, cfg.freeze)
        if cfg.lora:  # adapters injected in place (B = 0: the model still computes π_ref); the rest frozen
            apply_lora(self.model, parse_lora(cfg.lora))
        self.w0 = None  # the output head's initial value, for the L2 pull
        if cfg.unembedding_l2:  # (a tied head stays tied: the pull then holds the input embedding too)
            self.w0 = self.model.get_output_embeddings().weight.detach().clone()
        self.ref: dict[tuple, float] = {}  # training encodings → ln π_ref
        self.ref_tokens: dict[tuple, torch.Tensor] = {}  # and its per-token terms (for token dropout)
        # evaluation encodings → ln π_ref and its per-token terms, computed in exactly the chunks
        # evaluate_sets() uses, so that before training every IM reward is exactly 0 (float32 rounding
        # depends on a batch's padding and composition)
        self.ref_eval: dict[tuple, float] = {}
        self.ref_eval_tokens: dict[tuple, np.ndarray] = {}

    @property
    def _no_split_modules(self) -> list[str]:
        """The LM's decoder-layer classes: the units a fully sharded back end wraps (accelerate's
        transformer auto-wrap policy reads this attribute, as it does on a transformers model)."""
        return list(getattr(self.model, "_no_split_modules", None) or ())

    def trainable(self) -> list[torch.Tensor]:
        """What the optimiser moves: the reward type's parameters less those frozen (``cfg.freeze``)."""
        return [p for p in self.rt.trainable(self.model, self.u) if p.requires_grad]

    @torch.no_grad()
    def fill_reference(self, encs: list[Encoded], batch: int = 32) -> None:
        """ln π_ref of the training encodings from the current (initial) weights, ``batch`` at a time,
        in order of prompt length, prompt and length: a prompt's responses fall in one batch, where
        the scorer runs the prompt once (lm_probes.lm.scoring), and lengths stay close (less padding)."""
        if not self.rt.uses_reference:
            return
        encs = sorted(encs, key=lambda e: (e.prompt_len, e.input_ids[: e.prompt_len], len(e.input_ids)))
        ref, ref_tokens = {}, {}
        for i in self.runtime.shard(range(0, len(encs), batch)):
            chunk = encs[i : i + batch]
            with self.runtime.autocast():
                sc = score(self.model, chunk, self.pad)
            for e, lp, tok in zip(chunk, sc.logprob.tolist(), sc.token_logprob, strict=True):
                ref[e.input_ids] = lp
                if self.cfg.token_dropout:
                    ref_tokens[e.input_ids] = tok.detach().cpu()
        self.ref.update(self.runtime.merge(ref))
        self.ref_tokens.update(self.runtime.merge(ref_tokens))

    @torch.no_grad()
    def fill_eval_reference(self, ev: dict[str, list[tuple[Encoded, Encoded]]]) -> None:
        """ln π_ref (and its per-token terms) of every evaluation encoding, in exactly the chunks
        :func:`evaluate_sets` uses, so that before training every IM reward is exactly 0."""
        if not self.rt.uses_reference:
            return
        ref, ref_tokens = {}, {}
        for chunk in self.runtime.shard(eval_chunks(ev)):
            with self.runtime.autocast():
                sc = score(self.model, chunk, self.pad)
            for e, lp, tok in zip(chunk, sc.logprob.tolist(), sc.token_logprob, strict=True):
                ref[e.input_ids] = lp
                ref_tokens[e.input_ids] = tok.double().cpu().numpy()
        self.ref_eval.update(self.runtime.merge(ref))
        self.ref_eval_tokens.update(self.runtime.merge(ref_tokens))

    def rewards(
        self,
        encs: list[Encoded],
        table: dict | None = None,
        *,
        with_scored: bool = False,
        dropout: torch.Generator | None = None,
    ):
        """Rewards (N,) of ``encs`` (with ``with_scored``: and the Scored batch and the RewardParams used);
        ``table`` maps encodings to ln π_ref (default: the training table). With ``dropout`` (a seeded
        generator; training only) and ``cfg.token_dropout`` = p, each per-token term of the reward is
        dropped with probability p and the rest rescaled (mitigations.token_dropout_reward)."""
        ref = None
        if self.rt.uses_reference:
            table = self.ref if table is None else table
            ref = torch.tensor([table[e.input_ids] for e in encs], dtype=torch.float64, device=self.lm.device)
        params = RewardParams(self.cfg.beta, self.u, ref, self.answer_ids)
        # (a sharded back end: one pass per call, as many on every process)
        mode = "single" if self.runtime.lockstep else "auto"
        r, sc = self.rt.score_with(self.model, encs, self.pad, params, mode)
        p = self.cfg.token_dropout
        if dropout is not None and p:
            keep = token_keep_masks([e.response_len for e in encs], p, dropout)
            terms = [
                self.rt.token_rewards(
                    lp, self.ref_tokens[e.input_ids].to(lp) if self.rt.uses_reference else None, self.cfg.beta
                )
                for e, lp in zip(encs, sc.token_logprob, strict=True)
            ]
            r = torch.stack(
                [token_dropout_reward(t, k.to(t.device), p) for t, k in zip(terms, keep, strict=True)]
            )
        return (r, sc, params) if with_scored else r

    def pair_losses(self, encs: list[Encoded]) -> torch.Tensor:
        """The reward type's per-pair loss (N/2,) of training encodings (chosen, rejected) interleaved."""
        r, sc, params = self.rewards(encs, with_scored=True)
        return self.rt.pair_loss(r, sc, params)

    def batch_loss(
        self,
        pairs: list[tuple[Encoded, Encoded]],
        rewrites: list[tuple[Encoded, Encoded] | None] | None = None,
        dropout: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The training loss of a micro-batch, summed over its pairs: the reward type's per-pair loss,
        plus ``cfg.consistency`` × consistency_penalty for the pairs with a rewrite (``rewrites``, aligned
        with ``pairs``; their rewards are computed in the same pass). The L2 pull of the head is per
        optimiser step (:meth:`step_penalty`)."""
        encs = [e for pr in pairs for e in pr]
        with_rw = [i for i, w in enumerate(rewrites or []) if w is not None] if self.cfg.consistency else []
        encs += [e for i in with_rw for e in rewrites[i]]
        r, sc, params = self.rewards(encs, with_scored=True, dropout=dropout)
        q = self.rt.loss_values(r, sc, params)
        n = 2 * len(pairs)
        loss = self.rt.loss(q[0:n:2], q[1:n:2]).sum()
        if with_rw:
            orig = torch.stack([r[2 * i + j] for i in with_rw for j in (0, 1)])
            loss = loss + self.cfg.consistency * consistency_penalty(orig, r[n:]).sum()
        return loss

    def forward(self, pairs=None, rewrites=None, dropout=None, *, rewards_of=None, table=None):
        """What DDP / FSDP wrap. Training: a micro-batch's loss, :meth:`batch_loss` plus the head's L2
        pull counted once per pair (so that a full step carries it once per ``batch_size`` pairs).
        Evaluation (``rewards_of``: encodings): their (rewards, Scored, RewardParams) against the reference
        ``table``, through forward so that a fully sharded model gathers its parameters as it does in
        training (lm_probes.distributed)."""
        if rewards_of is not None:
            return self.rewards(rewards_of, table, with_scored=True)
        return self.batch_loss(pairs, rewrites, dropout) + self.step_penalty() * len(pairs)

    def step_penalty(self) -> torch.Tensor | float:
        """``cfg.unembedding_l2`` × ‖W − W₀‖² (0 without the pull)."""
        return (
            self.cfg.unembedding_l2 * unembedding_penalty(self.model, self.w0) if self.w0 is not None else 0.0
        )
