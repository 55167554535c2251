"""Sampling from a (trained) causal LM through transformers' ``generate``: seeded, batched, with
temperature / top-k / top-p and a stop rule.

    from lm_probes.lm.generation import SamplingConfig, generate
    outs = generate(lm, ["prompt one", "prompt two"], SamplingConfig(temperature=1.0, max_new_tokens=19))
    outs[0].text, outs[0].token_ids, outs[0].stopped      # stopped: "eos", "stop" or "length"
    set_logprob(lm, encs)      # ln π(S|x) = ln Σ_{y∈S} π(y|x) of a set of encoded responses to one prompt

Prompts are rendered exactly as the scoring path renders them (lm_probes.lm.encoding.prompt_ids: the chat
template's user turn and generation prompt when the tokenizer has one and ``chat_template`` is on),
left-padded in batches of ``batch_size``. Stop rule: the tokenizer's and the model's end-of-sequence
tokens, any of the ``stop`` strings (the text is cut before it), or ``max_new_tokens``.
``temperature=0`` is greedy decoding; ``top_k=0`` and ``top_p=1`` switch those filters off (the
paper's pure sampling: temperature 1, top-k 0, top-p 1). Batch ``i`` samples under its own generator
state, seeded from (``seed``, ``i``) inside ``torch.random.fork_rng``, so the same config gives the
same samples and the global RNG is left as it was.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lm_probes.lm.encoding import Encoded, pad_id_of, prompt_ids
from lm_probes.lm.loading import LoadedLM
from lm_probes.lm.scoring import score


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0  # 1: no nucleus filter
    max_new_tokens: int = 64
    batch_size: int = 16
    seed: int = 0
    stop: tuple[str, ...] = ()  # stop strings, besides the end-of-sequence tokens
    chat_template: bool = True

    def __post_init__(self):
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or self.max_new_tokens < 1:
            raise ValueError(
                f"sampling: need temperature ≥ 0, 0 < top_p ≤ 1, top_k ≥ 0, max_new_tokens ≥ 1 ({self})"
            )
        if self.batch_size < 1:
            raise ValueError(f"sampling: batch_size must be ≥ 1, got {self.batch_size}")


@dataclass(frozen=True)
class Generation:
    prompt: str
    text: str  # the new tokens decoded, cut before a stop string
    token_ids: tuple[int, ...]  # the new tokens, up to (not including) an end-of-sequence token
    stopped: str  # "eos", "stop" or "length"
    logprob: float  # ln π(token_ids | prompt) under the model's own (unfiltered, temperature-1) distribution


def eos_ids(lm: LoadedLM) -> list[int]:
    """End-of-sequence ids: the tokenizer's and the model's generation config's (which may list several)."""
    ids = {lm.tokenizer.eos_token_id}
    gen_eos = getattr(getattr(lm.model, "generation_config", None), "eos_token_id", None)
    ids.update(gen_eos if isinstance(gen_eos, list | tuple) else [gen_eos])
    ids = sorted(i for i in ids if i is not None)
    vocab = lm.model.get_output_embeddings().weight.shape[0]
    if any(not 0 <= i < vocab for i in ids):
        raise ValueError(
            f"end-of-sequence id(s) {[i for i in ids if not 0 <= i < vocab]} (tokenizer / generation_config)"
            f" lie outside the model's vocabulary of {vocab}: set generation_config.eos_token_id"
        )
    return ids


def _cut(lm: LoadedLM, prompt: str, new: list[int], lp: torch.Tensor, eos: set[int], stop) -> Generation:
    """One row of ``generate``'s output → Generation; ``lp`` (T,) ln π of each new token."""
    stopped = "length"
    for j, t in enumerate(new):
        if t in eos:
            new, stopped = new[:j], "eos"
            break
    text = lm.tokenizer.decode(new, skip_special_tokens=False)
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    if hits:
        text, stopped = text[: min(hits)], "stop"
    return Generation(prompt, text, tuple(new), stopped, float(lp[: len(new)].sum()))


@torch.no_grad()
def generate(
    lm: LoadedLM, prompts: list[str], cfg: SamplingConfig = SamplingConfig(), allowed=None
) -> list[Generation]:
    """One sample (or the greedy continuation) per prompt, in the order of ``prompts``. ``allowed``
    (constrained sampling): ``allowed(new_ids) → token ids`` that may come next after the new tokens
    so far; every other token is masked before the softmax (transformers' prefix_allowed_tokens_fn),
    so pure sampling draws from π renormalised over the allowed set. ``Generation.logprob`` stays
    ln π under the model's own, unconstrained distribution."""
    tok, model = lm.tokenizer, lm.model
    pad, eos = pad_id_of(tok), eos_ids(lm)
    sample = cfg.temperature > 0
    knobs = (
        dict(do_sample=True, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p)
        if sample
        else dict(do_sample=False, temperature=None, top_k=None, top_p=None)
    )
    stops = dict(stop_strings=list(cfg.stop), tokenizer=tok) if cfg.stop else {}
    was_training = model.training
    model.eval()
    out: list[Generation] = []
    try:
        for b, start in enumerate(range(0, len(prompts), cfg.batch_size)):
            batch = prompts[start : start + cfg.batch_size]
            ids = [prompt_ids(tok, p, chat_template=cfg.chat_template)[1] for p in batch]
            T = max(len(x) for x in ids)
            inp = torch.full((len(ids), T), pad, dtype=torch.long)
            mask = torch.zeros((len(ids), T), dtype=torch.long)
            for i, x in enumerate(ids):  # left padding: every prompt ends where generation starts
                inp[i, T - len(x) :] = torch.tensor(x)
                mask[i, T - len(x) :] = 1
            devices = [lm.device] if lm.device.type == "cuda" else []
            grammar = (
                {"prefix_allowed_tokens_fn": lambda _, ids, T=T: allowed(ids[T:].tolist())} if allowed else {}
            )
            with torch.random.fork_rng(devices=devices):
                seed = int(np.random.SeedSequence([cfg.seed, b]).generate_state(1)[0])
                torch.manual_seed(seed)
                seqs = model.generate(
                    input_ids=inp.to(lm.device),
                    attention_mask=mask.to(lm.device),
                    max_new_tokens=cfg.max_new_tokens,
                    pad_token_id=pad,
                    eos_token_id=eos,
                    output_logits=True,
                    return_dict_in_generate=True,
                    **knobs,
                    **stops,
                    **grammar,
                )
            new = seqs.sequences[:, T:]  # (B, steps)
            logits = torch.stack(seqs.logits, 1).double()  # (B, steps, V) raw logits
            lp = torch.log_softmax(logits, -1).gather(-1, new[..., None])[..., 0]  # (B, steps)
            for i, p in enumerate(batch):
                out.append(_cut(lm, p, new[i].tolist(), lp[i].cpu(), set(eos), cfg.stop))
    finally:
        model.train(was_training)
    return out


@torch.no_grad()
def set_logprob(lm: LoadedLM, encs: list[Encoded], max_group: int = 64) -> float:
    """ln π(S|x) = ln Σ_{y∈S} π(y|x) over the distinct responses ``encs`` (exact, no sampling): each
    scored by lm_probes.lm.scoring.score in passes that share the prompt's KV cache (``max_group``
    responses per pass), summed in log space.
    This is the mass a sampler puts on S (tests/lm/test_generation.py checks it against the logprobs
    of sampled sequences)."""
    distinct = list({e.input_ids: e for e in encs}.values())
    if not distinct:
        raise ValueError("set_logprob: the set of responses is empty")
    lp = score(
        lm.model, distinct, pad_id_of(lm.tokenizer), mode="cached", max_group=max_group
    ).logprob.double()
    return float(torch.logsumexp(lp, 0))
