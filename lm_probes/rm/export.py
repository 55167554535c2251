"""A trained reward model saved in the Hugging Face format, for the tools people already use, with what
it is written beside it (``rmgap_export.json``). Computation only; ``rmgap train --export`` is the command.

    export_reward_model(folder, lm, state, u, cfg, reference=lm_info_of_the_base)

What each reward type becomes (EXPORTS):
- the implicit RMs (im_rm, im_rm_no_ref, im_rm_mean, im_rm_mean_no_ref): the trained policy, a causal LM
  that ``AutoModelForCausalLM.from_pretrained`` loads (a TRL DPO policy); its reward is
  β·ln π_θ(y|x)/π_ref(y|x), and the metadata names the reference π_ref and β;
- ex_rm: ``AutoModelForSequenceClassification`` (num_labels 1): the backbone and u as its score head, so
  its logit on a sequence is r = ⟨u, h_last⟩, the EX-RM's reward;
- ex_grm: the causal LM; its reward is P("Yes" | the verification prompt), which the metadata names;
- hybrid: the causal LM (its implicit part) and ``rmgap_head.safetensors`` (u); the full reward,
  ⟨u, h_last⟩ + β ln π_θ/π_ref, is rmgap's alone.
ex_rm_mean (a head on the mean of the response states) has no Hugging Face class and is refused.
A LoRA run (``cfg.lora``) is exported merged, W0 + (α/r)·B·A, in the same classes; a causal-LM export
also holds its adapters as a peft folder, ``lora_adapter/`` (``PeftModel.from_pretrained(base, ...)``).
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch

from lm_probes.common import write_json
from lm_probes.lm.encoding import pad_id_of
from lm_probes.lm.loading import LoadedLM
from lm_probes.rm.lora import (
    adapter_state,
    apply_lora,
    lora_layers,
    merged_state,
    parse_lora,
    remove_lora,
    save_adapter,
)
from lm_probes.rm.rewards import get_reward_type

METADATA = "rmgap_export.json"
CAUSAL, CLASSIFIER = "AutoModelForCausalLM", "AutoModelForSequenceClassification"
EXPORTS = {  # reward type → (what loads it, what its reward is)
    "im_rm": (CAUSAL, "β·ln π_θ(y|x)/π_ref(y|x), summed over the response's tokens"),
    "im_rm_no_ref": (CAUSAL, "β·ln π_θ(y|x), summed over the response's tokens (no reference)"),
    "im_rm_mean": (CAUSAL, "β·mean over response tokens of ln π_θ/π_ref"),
    "im_rm_mean_no_ref": (CAUSAL, "β·mean over response tokens of ln π_θ"),
    "ex_rm": (CLASSIFIER, "the logit ⟨u, h_last⟩ at the last token (the score head is u)"),
    "ex_grm": (CAUSAL, 'P("Yes" | the verification prompt of lm_probes.rm.rewards)'),
    "hybrid": (CAUSAL, "⟨u, h_last⟩ + β·ln π_θ/π_ref: u in rmgap_head.safetensors; rmgap's alone"),
}


def export_reward_model(
    folder: Path, lm: LoadedLM, state: dict, u: torch.Tensor | None, cfg, reference: dict, trained_by: str
) -> dict:
    """Write the reward model whose LM weights are ``state`` (a state dict of ``lm.model``) and head ``u``
    to ``folder`` (created; an existing one is refused), with its tokenizer and ``rmgap_export.json``.
    ``reference``: what π_ref was (the base model's info); ``trained_by``: the command. → the metadata."""
    kind, folder = cfg.objective, Path(folder)
    check_export(folder, kind)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    loads_with, reward = EXPORTS[kind]
    lora = None
    if cfg.lora:  # (a LoRA run's state is its adapters: merged into the base, and saved as peft's too)
        lora = tmp / "lora_adapter" if loads_with == CAUSAL else None
        state = _merge_adapters(lm, state, parse_lora(cfg.lora), lora, reference.get("model"))
    with _no_progress_bars():
        if loads_with == CLASSIFIER:
            _save_classifier(tmp, lm, state, u)
        else:  # (a head untied in training, e.g. by a mitigation, is saved as its own tensor)
            if lm.model.get_output_embeddings().weight is not lm.model.get_input_embeddings().weight:
                lm.model.config.tie_word_embeddings = False
            lm.model.save_pretrained(tmp, state_dict=state)
        lm.tokenizer.save_pretrained(tmp)
    if kind == "hybrid":
        from safetensors.torch import save_file

        save_file({"u": u.detach().cpu().contiguous()}, str(tmp / "rmgap_head.safetensors"))
    meta = {
        "reward": kind,
        "loads_with": loads_with,
        "reward_is": reward,
        "beta": cfg.beta if kind != "ex_rm" else None,
        "reference": reference if get_reward_type(kind).uses_reference else None,
        "chat_template": cfg.chat_template,
        "trained_by": trained_by,
        "dtype": str(lm.dtype).removeprefix("torch."),
        "lora": cfg.lora,  # (the weights are merged, W0 + (α/r)·B·A; lora_adapter/ holds the adapters)
        "lora_adapter": "lora_adapter" if lora else None,
    }
    write_json(tmp / METADATA, meta)
    os.replace(tmp, folder)  # (the folder appears whole, or not at all)
    return meta


def _merge_adapters(lm: LoadedLM, adapters: dict, spec, adapter_dir: Path | None, base: str | None) -> dict:
    """The base model's state dict with a LoRA run's ``adapters`` merged (lm_probes.rm.lora); with
    ``adapter_dir``, the adapters also as a peft folder there. ``lm.model`` ends without adapters."""
    model = lm.model
    if not lora_layers(model):  # (a freshly loaded base: the trained run's own model has them already)
        apply_lora(model, spec)
    if set(adapters) != set(adapter_state(model)):
        raise ValueError(f"--lora {spec.text()}: the checkpoint's adapters are not this model's")
    model.load_state_dict(adapters, strict=False)
    merged = merged_state(model)
    if adapter_dir is not None:
        save_adapter(adapter_dir, model, spec, base)
    remove_lora(model)
    return merged


def reference_of(lm: LoadedLM) -> dict:
    """What names a loaded base model as a reference: its name, revision and file digest."""
    return {k: lm.info.get(k) for k in ("model", "revision", "file_sha256")}


def check_export(folder: Path, kind: str) -> None:
    """Refuse, in one line and before any work, a reward type with no export (EXPORTS) or an export
    folder that holds anything or cannot be made."""
    if kind not in EXPORTS:
        raise ValueError(
            f"--export: {kind} reads a head on the mean response state, which no Hugging Face class "
            f"computes; export one of {', '.join(EXPORTS)}"
        )
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ValueError(f"--export {folder}: exists and is not an empty folder; give a new one")
    probe = folder.parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise ValueError(f"--export {folder}: cannot be written ({probe} is not a writable folder)")


@contextmanager
def _no_progress_bars():
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _save_classifier(folder: Path, lm: LoadedLM, state: dict, u: torch.Tensor) -> None:
    """The backbone of ``state`` and u as the score head of the architecture's sequence classifier
    (built on the meta device, its weights assigned: no second copy is initialised)."""
    from transformers import AutoModelForSequenceClassification

    config = type(lm.model.config).from_dict(lm.model.config.to_dict())
    config.num_labels, config.pad_token_id = 1, pad_id_of(lm.tokenizer)
    config.architectures = None
    with torch.device("meta"):
        clf = AutoModelForSequenceClassification.from_config(config, dtype=lm.dtype)
    prefix = clf.base_model_prefix + "."
    head = [k for k in clf.state_dict() if not k.startswith(prefix)]
    if len(head) != 1 or clf.state_dict()[head[0]].shape != (1, u.shape[0]):
        raise ValueError(
            f"--export: {type(clf).__name__}'s head is {head}, not one (1, {u.shape[0]}) linear map: "
            "an EX-RM's u cannot be written as it"
        )
    weights = {k: v for k, v in state.items() if k.startswith(prefix)}
    weights[head[0]] = u.detach().reshape(1, -1).to(lm.dtype)
    clf.load_state_dict(weights, strict=True, assign=True)
    clf.save_pretrained(folder)


def read_export(folder: str | Path) -> dict | None:
    """The ``rmgap_export.json`` of a model folder rmgap exported (None for any other model)."""
    p = Path(folder) / METADATA
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{p}: not readable rmgap export metadata ({e})") from None
