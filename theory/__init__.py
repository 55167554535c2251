"""Pure math of explicit vs implicit reward models (theory/README.md). Arrays in, arrays out; no I/O.

theory.rewards       reward definitions, Bradley–Terry loss, accuracy with ties       (§1)
theory.dynamics      ρ coefficients and first-order reward changes, EX and IM         (§3)
theory.adam          Adam's first step, and the reward change along any given step    (§3)
theory.lora          a LoRA first step as the weight move it makes                    (§3)
theory.max_margin    the max-margin separator an EX-RM converges to                   (§4)
theory.verification  the tilting construction: verify without generating             (§2)
theory.graphs        the Hamiltonian-cycle task of Theorem 1's experiment              (§2)

The statement of every result, in this project's words: theory/README.md.
"""

from theory.adam import adam_first_step, ex_reward_change_along, im_reward_change_along
from theory.dynamics import (
    RhoTerms,
    TokenStates,
    ex_reward_change,
    im_reward_change,
    im_reward_change_batch,
    im_token_contributions,
    log_prob_grad_inner,
    log_prob_grad_W,
    rho,
    rho_terms,
)
from theory.lora import lora_weight_step
from theory.max_margin import MaxMarginResult, NotSeparableError, max_margin_separator
from theory.rewards import Accuracy, accuracy, bt_grad_scale, bt_loss, ex_reward, im_reward, pair_outcomes
from theory.verification import tilted_correct_mass, tilted_policy, tilting_bound, verifier_margin

__all__ = [
    "Accuracy",
    "MaxMarginResult",
    "NotSeparableError",
    "RhoTerms",
    "TokenStates",
    "accuracy",
    "adam_first_step",
    "bt_grad_scale",
    "bt_loss",
    "ex_reward",
    "ex_reward_change",
    "ex_reward_change_along",
    "im_reward",
    "im_reward_change",
    "im_reward_change_along",
    "im_reward_change_batch",
    "im_token_contributions",
    "log_prob_grad_W",
    "log_prob_grad_inner",
    "lora_weight_step",
    "max_margin_separator",
    "pair_outcomes",
    "rho",
    "rho_terms",
    "tilted_correct_mass",
    "tilted_policy",
    "tilting_bound",
    "verifier_margin",
]
