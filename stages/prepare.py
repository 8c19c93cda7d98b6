"""Stage `prepare`: make the dense model loadable offline (GGUF in a pip package -> plain HF folder)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipeline.artifacts import (
    ArtifactPaths,
    conversion_manifest,
    prepare_output,
    source_reference_manifest,
    write_manifest,
)
from pipeline.assets import gguf_source
from pipeline.dense import convert_gguf
from pipeline.inputs import check_model_source

log = logging.getLogger(__name__)


def run(cfg: Any) -> Path:
    # Before anything is recorded: a manifest marked complete for a bad source would make the corrected rerun
    # refuse its own output as "produced by a different job".
    check_model_source(cfg)
    paths = ArtifactPaths(cfg)
    target = paths.dense_model
    if gguf_source(cfg.model) is None:
        # Nothing to convert, but the stage still records which weights later stages derive from (and gives
        # DVC an output to depend on).
        manifest = source_reference_manifest(cfg, target)
        if prepare_output(target, manifest, cfg.overwrite) != "skip":
            target.mkdir(parents=True, exist_ok=True)
            write_manifest(target, manifest)
        log.info("model.source=%s is loaded by from_pretrained directly: nothing to convert", cfg.model.source)
        return target
    action = prepare_output(target, conversion_manifest(cfg.model), cfg.overwrite)
    if action == "skip":
        log.info("reusing the converted dense model at %s", target)
        return target
    convert_gguf(cfg.model, target)
    log.info("dense model written to %s", target)
    return target
