"""LoRA adapters (peft) for training, resuming, exporting and probing any registered reward type with
the base weights frozen (theory/README.md §3, "Under LoRA"): for the users who train 3B–8B on one GPU.

    spec = parse_lora("8,16,q_proj+v_proj")       # r, alpha, target modules ('+' or ',' between them)
    apply_lora(model, spec)                        # adapters injected in place; the rest frozen
    adapter_state(model)                           # the adapters' tensors (what a checkpoint holds)
    merged_state(model)                            # W0 + (α/r)·B·A: the base architecture's state dict
    remove_lora(model)                             # the base modules back, exactly as they were

Adapters are peft's (``inject_adapter_in_model``, ``LoraConfig`` with dropout 0 and no bias): B = 0 at
the start, so the model with adapters computes exactly what the base model does (π_ref = the base
model, every IM reward 0 before training). A is drawn from torch's generator (seeded by the trainer).
The output head and the embeddings are refused as targets: the fixed-state theory, the tied head and
the export all read W itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

ADAPTER = "default"  # peft's adapter name
NOT_TARGETS = ("lm_head", "embed_tokens", "embed_out", "wte", "word_embeddings", "embed_in")


@dataclass(frozen=True)
class LoraSpec:
    r: int
    alpha: float
    targets: tuple[str, ...]  # module names (their last component), or ("all-linear",)

    @property
    def scaling(self) -> float:
        """α / r: the adapter's product B·A enters the weight as W0 + (α/r)·B·A."""
        return self.alpha / self.r

    def text(self) -> str:
        return f"{self.r},{self.alpha:g},{'+'.join(self.targets)}"


def parse_lora(text: str) -> LoraSpec:
    """``r,alpha,targets`` (targets joined by '+' or ','; 'all-linear' for every linear layer of the
    body) → LoraSpec; anything else is one line naming --lora."""
    parts = [p.strip() for p in str(text).replace("+", ",").split(",")]
    try:
        r, alpha, targets = int(parts[0]), float(parts[1]), tuple(p for p in parts[2:] if p)
    except (ValueError, IndexError):
        raise ValueError(
            f"--lora {text!r}: give r,alpha,targets, e.g. 8,16,q_proj+v_proj (r an integer)"
        ) from None
    if r < 1 or not 0 < alpha < math.inf or not targets:
        raise ValueError(
            f"--lora {text!r}: r must be ≥ 1, alpha finite and > 0, and at least one target module"
        )
    if "all-linear" in targets and len(targets) > 1:
        raise ValueError(f"--lora {text!r}: all-linear stands alone (it already names every linear layer)")
    if bad := [t for t in targets if t in NOT_TARGETS]:
        raise ValueError(
            f"--lora {text!r}: {bad[0]} is the output head or an embedding; LoRA here adapts the body only"
        )
    return LoraSpec(r, alpha, targets)


def apply_lora(model: torch.nn.Module, spec: LoraSpec) -> torch.nn.Module:
    """Inject ``spec``'s adapters into ``model`` in place (peft), freeze every other parameter, → model.
    A target no module matches, one that is the output head or an embedding, or a model that has
    adapters already is one line (and the model is left as it was)."""
    from peft import LoraConfig, inject_adapter_in_model

    if lora_layers(model):
        raise ValueError(f"--lora {spec.text()}: the model has LoRA adapters already")
    targets = "all-linear" if spec.targets == ("all-linear",) else list(spec.targets)
    config = LoraConfig(
        r=spec.r, lora_alpha=spec.alpha, target_modules=targets, lora_dropout=0.0, bias="none"
    )
    if targets == "all-linear":  # (peft resolves it on a PeftModel only: the body's linear layers here)
        from transformers.pytorch_utils import Conv1D

        head = model.get_output_embeddings()
        linear = [
            n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D)) and m is not head
        ]
        config.target_modules = sorted({n.rsplit(".", 1)[-1] for n in linear})
    model._rmgap_requires_grad = {id(p): p.requires_grad for p in model.parameters()}  # (remove_lora's)
    ends = (model.get_input_embeddings(), model.get_output_embeddings())
    try:
        inject_adapter_in_model(config, model, adapter_name=ADAPTER)
        if bad := [n for n, m in lora_layers(model).items() if m.get_base_layer() in ends]:
            raise ValueError(f"{bad[0]} is the output head or an embedding; LoRA here adapts the body only")
    except ValueError as e:
        remove_lora(model)
        why = " ".join(str(e).split())[:160]
        raise ValueError(f"--lora {spec.text()}: {why}") from None
    for name, p in model.named_parameters():
        p.requires_grad_(is_adapter(name))
    return model


def is_adapter(name: str) -> bool:
    """Whether a parameter or state-dict name is an adapter's (lora_A / lora_B)."""
    return ".lora_A." in name or ".lora_B." in name


def adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' tensors by state-dict name (what a LoRA run's checkpoint holds of the LM)."""
    return {k: v for k, v in model.state_dict().items() if is_adapter(k)}


def lora_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The modules peft replaced, by name."""
    from peft.tuners.lora import LoraLayer

    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def merged_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of the base architecture with every adapter merged, W = W0 + (α/r)·B·A (peft's
    own delta: transposed for Conv1D layers; in at least float32, then the weight's dtype), under the base
    model's names (``x.base_layer.weight`` → ``x.weight``; adapters left out): what an export saves.
    The model itself is not changed."""
    layers = lora_layers(model)
    out = {}
    for k, v in model.state_dict().items():
        if is_adapter(k):
            continue
        owner = k.rsplit(".base_layer.", 1)[0] if ".base_layer." in k else None
        if owner in layers and k.endswith(".base_layer.weight"):
            m = layers[owner]
            with torch.no_grad():
                wide = torch.promote_types(v.dtype, torch.float32)  # (bf16 → fp32; fp64 stays)
                a, b = m.lora_A[ADAPTER].weight.to(wide), m.lora_B[ADAPTER].weight.to(wide)
                delta = (b @ a).T if m.fan_in_fan_out else b @ a
                v = (v.to(wide) + m.scaling[ADAPTER] * delta).to(v.dtype)
        out[k.replace(".base_layer.", ".")] = v
    return out


def remove_lora(model: torch.nn.Module) -> torch.nn.Module:
    """Put back the base module of every adapted layer (unmerged: the base weights as they were), and
    each base parameter's requires_grad as it was before apply_lora; → model."""
    for name in lora_layers(model):
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, child, getattr(owner, child).get_base_layer())
    flags = model.__dict__.pop("_rmgap_requires_grad", {})
    for p in model.parameters():
        p.requires_grad_(flags.get(id(p), True))
    if hasattr(model, "peft_config"):  # (what inject_adapter_in_model recorded on the model)
        del model.peft_config
    return model


def save_adapter(folder, model: torch.nn.Module, spec: LoraSpec, base: str | None) -> None:
    """The adapters as a peft folder (adapter_config.json, adapter_model.safetensors) that
    ``PeftModel.from_pretrained(base_model, folder)`` loads."""
    from peft import LoraConfig
    from peft.utils import SAFETENSORS_WEIGHTS_NAME
    from safetensors.torch import save_file

    layers = sorted(lora_layers(model))  # (full names: exactly the modules whose adapters are saved)
    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        target_modules=layers,
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=base,
    )
    config.save_pretrained(str(folder))
    # peft's file names: base_model.model.<module>.lora_A.weight (the adapter's own name left out)
    tensors = {
        "base_model.model." + k.replace(f".{ADAPTER}.", "."): v.detach().cpu().contiguous()
        for k, v in adapter_state(model).items()
    }
    save_file(tensors, str(folder / SAFETENSORS_WEIGHTS_NAME), metadata={"format": "pt"})
