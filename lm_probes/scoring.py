"""The one scoring path for (prompt, response) pairs on a causal LM, used by probes and training.

    enc = encode(tokenizer, prompt, response)          # prompt via the chat template, response appended
    states = extract_states(lm, [enc, ...])            # per response token: id, predicting state, logits
    logp = response_logprobs(logits, batch)            # Σ_k ln π(y_k | x, y_<k), differentiable

Prompt and response are tokenised separately and concatenated, so the response's tokens are exactly
the response's own; when tokenising the joint string would merge tokens across the boundary, the
``Encoded`` says so (``boundary_merged``) and callers report it. For a response y = (y_1..y_K) after a
prompt of P tokens, the state that predicts y_k sits at position P − 1 + (k − 1); the EX-RM reads the
state at the last response token, position P + K − 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from theory import TokenStates


class ScoringError(ValueError):
    """A (prompt, response) pair that cannot be scored: the message names the row and the problem."""


class HeadMismatchError(RuntimeError):
    """The output head applied to the extracted states does not reproduce the model's logits."""


@dataclass(frozen=True)
class Encoded:
    input_ids: tuple[int, ...]
    prompt_len: int
    boundary_merged: bool
    where: str = ""

    @property
    def response_len(self) -> int:
        return len(self.input_ids) - self.prompt_len

    @property
    def response_ids(self) -> tuple[int, ...]:
        return self.input_ids[self.prompt_len :]


def render_prompt(tokenizer, prompt: str, *, chat_template: bool = True) -> str:
    """The prompt as the model sees it: through the chat template (user turn + generation prompt) when
    the tokenizer has one and ``chat_template`` is on, else the raw text."""
    if chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return prompt


def encode(
    tokenizer,
    prompt: str,
    response: str,
    *,
    chat_template: bool = True,
    max_length: int | None = None,
    where: str = "",
) -> Encoded:
    """Tokenise prompt and response separately and concatenate (see module docstring)."""
    at = f"{where}: " if where else ""
    if not isinstance(prompt, str) or not isinstance(response, str):
        raise ScoringError(f"{at}prompt and response must be strings")
    if not response.strip():
        raise ScoringError(f"{at}empty response: an empty response has no tokens to score")
    templated = chat_template and bool(getattr(tokenizer, "chat_template", None))
    text = render_prompt(tokenizer, prompt, chat_template=chat_template)
    special = not templated  # the template already carries the special tokens it wants
    p_ids = tokenizer(text, add_special_tokens=special)["input_ids"]
    r_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    if not p_ids:
        raise ScoringError(f"{at}the prompt tokenises to nothing")
    if not r_ids:
        raise ScoringError(f"{at}the response {response!r} tokenises to nothing")
    joint = tokenizer(text + response, add_special_tokens=special)["input_ids"]
    ids = tuple(p_ids) + tuple(r_ids)
    if max_length is not None and len(ids) > max_length:
        raise ScoringError(
            f"{at}sequence of {len(ids)} tokens (prompt {len(p_ids)} + response {len(r_ids)}) "
            f"exceeds the model's context of {max_length} tokens"
        )
    return Encoded(ids, len(p_ids), list(joint) != list(ids), where)


def pad_batch(encs: list[Encoded], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, T) input ids and attention mask."""
    T = max(len(e.input_ids) for e in encs)
    ids = torch.full((len(encs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encs), T), dtype=torch.long)
    for i, e in enumerate(encs):
        ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
        mask[i, : len(e.input_ids)] = 1
    return ids.to(device), mask.to(device)


def pad_id_of(tokenizer) -> int:
    pid = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return 0 if pid is None else int(pid)


def response_index(
    encs: list[Encoded], device=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat indices over all response tokens of a batch: (row, predicting position, token id, owner)."""
    rows, pos, tok, owner = [], [], [], []
    for i, e in enumerate(encs):
        k = e.response_len
        rows += [i] * k
        pos += list(range(e.prompt_len - 1, e.prompt_len - 1 + k))
        tok += list(e.response_ids)
        owner += [i] * k
    as_t = lambda x: torch.tensor(x, dtype=torch.long, device=device)  # noqa: E731
    return as_t(rows), as_t(pos), as_t(tok), as_t(owner)


def response_logprobs(logits: torch.Tensor, encs: list[Encoded]) -> torch.Tensor:
    """Σ_k ln π(y_k | x, y_<k) for each row: (B,), differentiable, summed over response tokens."""
    rows, pos, tok, owner = response_index(encs, logits.device)
    lp = torch.log_softmax(
        logits[rows, pos].float() if logits.dtype == torch.bfloat16 else logits[rows, pos], -1
    )
    per_token = lp.gather(-1, tok[:, None]).squeeze(-1)
    return torch.zeros(len(encs), dtype=per_token.dtype, device=logits.device).index_add(0, owner, per_token)


def last_hidden(hidden: torch.Tensor, encs: list[Encoded]) -> torch.Tensor:
    """(B, D): the last-layer state at each row's last response token (what an EX-RM reads)."""
    last = torch.tensor([len(e.input_ids) - 1 for e in encs], device=hidden.device)
    return hidden[torch.arange(len(encs), device=hidden.device), last]


def forward(model, encs: list[Encoded], pad_id: int):
    """One forward pass → (logits (B, T, V), last-layer hidden states (B, T, D))."""
    device = next(model.parameters()).device
    ids, mask = pad_batch(encs, pad_id, device)
    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    return out.logits, out.hidden_states[-1]


@dataclass(frozen=True)
class ResponseStates:
    """What the dynamics engine needs from one scored response (numpy, float64 unless stated)."""

    states: TokenStates  # tokens (K,), hidden (K, D) predicting states, logits (K, V)
    last_hidden: np.ndarray  # (D,)
    mean_hidden: np.ndarray  # (D,) mean of the states at the response's tokens
    logprob: float


def check_head(model, hidden: torch.Tensor, logits: torch.Tensor, *, rtol: float | None = None) -> float:
    """Relative max error of output_head(hidden) vs the model's logits; raises HeadMismatchError when
    the model post-processes its logits (soft-capping, scaling, a bias): the fixed-state formula of
    THEORY.md §3 assumes logits = W h."""
    head = model.get_output_embeddings()
    with torch.no_grad():
        mine = head(hidden)
    err = float((mine - logits).abs().max() / logits.abs().max().clamp_min(1e-30))
    tol = rtol if rtol is not None else {torch.float64: 1e-10, torch.float32: 1e-4}.get(logits.dtype, 2e-2)
    if err > tol:
        cfg = getattr(model, "config", None)
        hints = [
            f"{k}={getattr(cfg, k)}"
            for k in ("final_logit_softcapping", "logit_scale", "logits_scaling")
            if getattr(cfg, k, None) not in (None, 1, 1.0)
        ]
        if getattr(head, "bias", None) is not None:
            hints.append("the output head has a bias")
        raise HeadMismatchError(
            f"output head applied to the last hidden states differs from the model's logits by {err:.2e} "
            f"(relative){' — ' + ', '.join(hints) if hints else ''}; logits are not W·h here, so the "
            "fixed-state dynamics of theory.dynamics do not apply to this model"
        )
    return err


@torch.no_grad()
def extract_states(
    model, encs: list[Encoded], pad_id: int, *, batch_size: int = 16, verify_head: bool = True
) -> list[ResponseStates]:
    """Per response: token ids, the states predicting them, their logits, last and mean state, ln π."""
    out = []
    for b in range(0, len(encs), batch_size):
        chunk = encs[b : b + batch_size]
        logits, hidden = forward(model, chunk, pad_id)
        if verify_head and b == 0:
            check_head(model, hidden, logits)
        logp = response_logprobs(logits, chunk)
        last = last_hidden(hidden, chunk)
        for i, e in enumerate(chunk):
            sl = slice(e.prompt_len - 1, len(e.input_ids) - 1)
            h = hidden[i, sl].double().cpu().numpy()
            states = TokenStates(np.array(e.response_ids), h, logits[i, sl].double().cpu().numpy())
            mean = hidden[i, e.prompt_len : len(e.input_ids)].double().mean(0).cpu().numpy()
            out.append(ResponseStates(states, last[i].double().cpu().numpy(), mean, float(logp[i])))
    return out
