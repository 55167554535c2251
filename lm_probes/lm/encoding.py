"""Encoding (prompt, response) pairs for a causal LM: the one place text becomes token ids.

    enc = encode(tokenizer, prompt, response)          # prompt via the chat template, response appended

Prompt and response are tokenised separately and concatenated, so the response's tokens are exactly
the response's own; when tokenising the joint string would merge tokens across the boundary, the
``Encoded`` says so (``boundary_merged``) and callers report it. For a response y = (y_1..y_K) after a
prompt of P tokens, the state that predicts y_k sits at position P − 1 + (k − 1); the EX-RM reads the
state at the last response token, position P + K − 1 (lm_probes.lm.scoring).
"""

from __future__ import annotations

from dataclasses import dataclass


class ScoringError(ValueError):
    """A (prompt, response) pair that cannot be scored: the message names the row and the problem."""


class SequenceTooLongError(ScoringError):
    """Prompt + response exceed the model's context (training drops such pairs, the probe refuses them)."""


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


def render_prompt(tokenizer, prompt, *, chat_template: bool = True) -> str:
    """The prompt as the model sees it: through the chat template (user turn + generation prompt) when
    the tokenizer has one and ``chat_template`` is on, else the raw text. ``prompt`` is a string (one
    user turn) or a conversation, a sequence of (role, content) messages, which needs the template."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else None
    if messages is None:
        if not _templated(tokenizer, chat_template):
            why = "--no-chat-template was given" if chat_template is False else "the tokenizer has none"
            raise ScoringError(f"a conversation's prompt is rendered by the chat template, and {why}")
        messages = [{"role": role, "content": content} for role, content in prompt]
    if _templated(tokenizer, chat_template):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return prompt


def prompt_ids(tokenizer, prompt: str, *, chat_template: bool = True) -> tuple[str, list[int]]:
    """(rendered text, token ids) of a prompt as the model sees it before its response: rendered by
    :func:`render_prompt`; the tokenizer's own special tokens are added only without a template (the
    template already carries the ones it wants). Used by :func:`encode` and by generation."""
    text = render_prompt(tokenizer, prompt, chat_template=chat_template)
    return text, tokenizer(text, add_special_tokens=not _templated(tokenizer, chat_template))["input_ids"]


def _templated(tokenizer, chat_template: bool) -> bool:
    return chat_template and bool(getattr(tokenizer, "chat_template", None))


def encode(
    tokenizer,
    prompt: str,
    response: str,
    *,
    chat_template: bool = True,
    max_length: int | None = None,
    max_part_length: int | None = None,
    where: str = "",
) -> Encoded:
    """Tokenise prompt and response separately and concatenate (see module docstring). Raises
    :class:`SequenceTooLongError` when the whole exceeds ``max_length`` or the (templated) prompt or the
    response alone exceeds ``max_part_length`` (the paper's rule: 512 tokens each)."""
    at = f"{where}: " if where else ""
    if not isinstance(prompt, str | tuple) or not isinstance(response, str):
        raise ScoringError(f"{at}the prompt must be a string or a conversation and the response a string")
    if not response.strip():
        raise ScoringError(f"{at}empty response: an empty response has no tokens to score")
    _too_long_to_tokenise(tokenizer, prompt, response, max_length, max_part_length, at)
    try:
        text, p_ids = prompt_ids(tokenizer, prompt, chat_template=chat_template)
    except ScoringError as exc:
        raise ScoringError(f"{at}{exc}") from None
    special = not _templated(tokenizer, chat_template)
    r_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    if not p_ids:
        raise ScoringError(f"{at}the prompt tokenises to nothing")
    if not r_ids:
        raise ScoringError(f"{at}the response {response!r} tokenises to nothing")
    joint = tokenizer(text + response, add_special_tokens=special)["input_ids"]
    ids = tuple(p_ids) + tuple(r_ids)
    if max_part_length is not None and max(len(p_ids), len(r_ids)) > max_part_length:
        raise SequenceTooLongError(
            f"{at}prompt of {len(p_ids)} or response of {len(r_ids)} tokens exceeds the limit of "
            f"{max_part_length} tokens per part"
        )
    if max_length is not None and len(ids) > max_length:
        raise SequenceTooLongError(
            f"{at}sequence of {len(ids)} tokens (prompt {len(p_ids)} + response {len(r_ids)}) "
            f"exceeds the model's context of {max_length} tokens"
        )
    return Encoded(ids, len(p_ids), list(joint) != list(ids), where)


def _too_long_to_tokenise(tokenizer, prompt, response, max_length, max_part_length, at) -> None:
    """Raise SequenceTooLongError, before tokenising, for text that cannot fit: no token spells more than
    L characters (the vocabulary's longest), so n characters are at least n / L tokens; the bound is
    taken with a margin of 4 (normalisers, spaces between words). A 10 MB line is refused in
    microseconds instead of tokenised for a minute."""
    n_prompt = len(prompt) if isinstance(prompt, str) else sum(len(c) for _, c in prompt)
    limits = [(n_prompt + len(response), max_length, "the model's context of")]
    limits += [(max(n_prompt, len(response)), max_part_length, "the per-part limit of")]
    longest = tokenizer.__dict__.get("_rmgap_longest_token")
    for n, limit, what in limits:
        if limit is None:
            continue
        if longest is None:
            longest = tokenizer.__dict__["_rmgap_longest_token"] = max(
                map(len, tokenizer.get_vocab()), default=1
            )
        if n > 4 * longest * limit:
            raise SequenceTooLongError(
                f"{at}{n} characters cannot fit {what} {limit} tokens (checked before tokenising: "
                f"no token is longer than {longest} characters)"
            )


def pad_id_of(tokenizer) -> int:
    pid = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return 0 if pid is None else int(pid)
