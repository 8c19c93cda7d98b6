"""Stage `prepare`: make the dense model loadable offline (GGUF in a pip package -> plain HF folder)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipeline.artifacts import ArtifactPaths, prepare_output
from pipeline.models import conversion_manifest, convert_gguf

log = logging.getLogger(__name__)


def run(cfg: Any) -> Path | None:
    paths = ArtifactPaths(cfg)
    if cfg.model.source_kind != "gguf_package":
        log.info("model.source=%s is loaded by from_pretrained directly: nothing to prepare", cfg.model.source)
        return None
    target = paths.dense_model
    action = prepare_output(target, conversion_manifest(cfg.model), cfg.overwrite)
    if action == "skip":
        log.info("reusing the converted dense model at %s", target)
        return target
    convert_gguf(cfg.model, target)
    log.info("dense model written to %s", target)
    return target
