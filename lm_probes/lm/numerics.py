"""Keep a float64 model in float64 (the probe's check mode), and keep forward-mode autodiff working.

transformers computes two things in float32 whatever the model's dtype: the eager attention's softmax
and Llama-style RMSNorm (``hidden_states.to(torch.float32)``). For a float64 model that is a down-cast
that caps precision at ~1e-7 relative, so a one-step reward change of 1e-9 drowns in rounding noise.

* ``dtype_preserving_attention``, registered with transformers as "rmgap_eager": the same eager
  attention with the softmax in the input dtype (float32 for half precision). Being plain tensor ops it
  supports torch.func.jvp, which SDPA's CPU kernel does not.
* ``keep_rms_norms_in_dtype(model)``: RMSNorm modules of the Llama family (those with a
  ``variance_epsilon``) compute in the input dtype when it is float64.
"""

from __future__ import annotations

import torch

ATTN_NAME = "rmgap_eager"


def dtype_preserving_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """query (B, H, Q, d), key/value (B, H_kv, K, d) → (attn_output (B, Q, H, d), weights (B, H, Q, K))."""
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # grouped-query attention: each key/value head serves ``groups`` query heads
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    softcap = kwargs.get("softcap")
    if softcap is not None:
        weights = softcap * torch.tanh(weights / softcap)
    if attention_mask is not None:
        weights = weights + attention_mask[..., : key.shape[-2]]
    work = torch.float32 if query.dtype in (torch.float16, torch.bfloat16) else query.dtype
    weights = torch.nn.functional.softmax(weights, dim=-1, dtype=work).to(query.dtype)
    weights = torch.nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def _rms_norm_in_dtype(self, hidden_states):
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


def keep_rms_norms_in_dtype(model) -> int:
    """Patch Llama-style RMSNorms of a float64 model to compute in float64; returns how many."""
    if next(model.parameters()).dtype != torch.float64:
        return 0
    n = 0
    for mod in model.modules():
        if (
            type(mod).__name__.endswith("RMSNorm")
            and hasattr(mod, "variance_epsilon")
            and hasattr(mod, "weight")
        ):
            mod.forward = _rms_norm_in_dtype.__get__(mod)
            n += 1
    return n


def register() -> str:
    """Register the attention and, just as important, the causal-mask builder for its name: without
    the latter transformers builds no mask for an unknown implementation and attention is not causal."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(ATTN_NAME, dtype_preserving_attention)
    AttentionMaskInterface.register(ATTN_NAME, ALL_MASK_ATTENTION_FUNCTIONS["eager"])
    return ATTN_NAME
