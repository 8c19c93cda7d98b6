"""Loading dense models and tokenizers from the Hub, a local folder, or a GGUF file shipped in a pip package."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from .artifacts import COMPLETE, ArtifactError, Manifest, atomic_dir, conversion_manifest, read_manifest, write_manifest
from .assets import AssetError, gguf_source

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def torch_dtype(name: str) -> torch.dtype:
    return DTYPES[name]


def peak_device_memory(device: torch.device) -> int | None:
    """Peak bytes this process's caching allocator reserved on a CUDA device: what the job needs the GPU to
    have free (None on CPU, where RSS is the measure)."""
    return int(torch.cuda.max_memory_reserved(device)) if device.type == "cuda" else None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise AssetError(f"device={name!r} was asked for but CUDA is not available: use device=cpu or auto")
    return torch.device(name)


def convert_gguf(model_cfg: Any, target: Path) -> Manifest:
    """De-quantise a GGUF model once into a plain HF folder (safetensors + tokenizer), written atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_source(model_cfg)
    assert path is not None, "convert_gguf needs a GGUF source"
    manifest = conversion_manifest(model_cfg)
    log.info("converting %s to a HF folder at %s", path, target)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    # save_pretrained refuses quantised models; the weights are already de-quantised to float32.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_manifest(tmp, manifest)
    return manifest


def model_location(cfg: Any, dense_dir: Path) -> str:
    """Where from_pretrained should look: the converted folder, a local path, or a Hub id."""
    m = cfg.model
    if gguf_source(m) is not None:
        found = read_manifest(dense_dir)
        if found is None or found.status != COMPLETE:
            raise ArtifactError(f"dense model not prepared at {dense_dir}: run `modegpt prepare` first")
        if found.fingerprint != conversion_manifest(m).fingerprint:
            raise ArtifactError(
                f"{dense_dir} was converted from another GGUF/package version: "
                "rerun `modegpt prepare overwrite=[prepare]`"
            )
        return str(dense_dir)
    return m.source


def _from_pretrained_kwargs(cfg: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"trust_remote_code": bool(cfg.model.trust_remote_code)}
    if cfg.model.source_kind == "hf" and cfg.model.revision:
        kwargs["revision"] = cfg.model.revision
    return kwargs


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def load_tokenizer(cfg: Any, dense_dir: Path) -> Any:
    from transformers import AutoTokenizer

    location = model_location(cfg, dense_dir)
    try:
        return AutoTokenizer.from_pretrained(location, **_from_pretrained_kwargs(cfg))
    except (OSError, ValueError) as e:  # transformers' paragraphs about slow tokenizers, sentencepiece, the Hub
        raise AssetError(f"cannot load the tokenizer of model.source={location!r}: {_first_line(e)}") from e


def load_model(cfg: Any, dense_dir: Path, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """Load the dense model on CPU (stages move one block at a time to the device), in eval mode."""
    from transformers import AutoModelForCausalLM

    location = model_location(cfg, dense_dir)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            location,
            dtype=dtype or torch_dtype(cfg.model.dtype),
            attn_implementation="sdpa",
            low_cpu_mem_usage=True,
            **_from_pretrained_kwargs(cfg),
        )
    except OSError as e:
        raise AssetError(f"cannot load model.source={location!r}: {_first_line(e)}") from e
    model.eval()
    return model
