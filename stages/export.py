"""Stage `export`: the compressed checkpoint in the formats serving engines load.

From a ``compression.shape=deci`` or ``stock`` solve's checkpoint: an HF folder (DeciLM / Nemotron-NAS for vLLM,
SGLang and TensorRT-LLM; the family's own class for stock), a GGUF for llama.cpp at ``export.gguf_dtype``, and
the quantized GGUFs of ``export.quantize`` where llama.cpp is installed. A ``free`` solve is refused (no engine
runs per-head cuts); in the ``run`` chain it is skipped with a log line.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipeline.artifacts import (
    COMPLETE,
    ArtifactPaths,
    atomic_dir,
    expected_export,
    prepare_output,
    read_manifest,
    write_manifest,
)
from pipeline.assembly import load_compressed
from pipeline.assets import gguf_source
from pipeline.dense import load_tokenizer
from pipeline.export import export_refusal
from pipeline.export.gguf_file import quantize_gguf, quantizer, write_gguf
from pipeline.export.hf import write_hf
from pipeline.export.layout import ExportError, engine_model

log = logging.getLogger(__name__)


def gguf_name(dtype_or_quant: str) -> str:
    return f"model-{dtype_or_quant}.gguf"


def run(cfg: Any, rate: float | None = None) -> Path:
    paths = ArtifactPaths(cfg)
    if not cfg.export.formats:  # how a sweep over shapes (dvc.yaml runs export) leaves a free solve unexported
        log.info("export.formats=[]: nothing to export")
        return paths.export(rate)
    reason = export_refusal(cfg)
    if reason is not None:
        raise ExportError(reason)
    source = paths.checkpoint(rate)
    checkpoint = read_manifest(source)
    if checkpoint is None or checkpoint.status != COMPLETE:
        raise ExportError(f"no complete compressed checkpoint at {source}: run `modegpt assemble` first")
    x = cfg.export
    expected = expected_export(cfg, checkpoint.fingerprint)
    target = paths.export(rate)
    quantize = list(x.quantize) if "gguf" in x.formats else []
    can_quantize = quantizer() is not None
    if prepare_output(target, expected, cfg.overwrite) == "skip":
        if can_quantize and read_manifest(target).extra.get("not_quantized"):
            return _add_quantized(target, x.gguf_dtype)
        log.info("reusing export %s", target)
        return target
    model = load_compressed(source)
    kind = cfg.compression.shape
    em = engine_model(model, kind)
    tokenizer = load_tokenizer(cfg, paths.dense_model)
    files = []
    with atomic_dir(target) as tmp:
        tokenizer_dir = tmp / ("hf" if "hf" in x.formats else "tokenizer")
        if "hf" in x.formats:
            write_hf(em, tokenizer, tokenizer_dir, kind)
            files.append("hf")
        else:
            tokenizer.save_pretrained(tokenizer_dir)
        if "gguf" in x.formats:
            base = write_gguf(em, tmp / gguf_name(x.gguf_dtype), x.gguf_dtype, tokenizer_dir,
                              source_gguf=gguf_source(cfg.model), name=f"{cfg.model.name}-{kind}")
            files.append(base.name)
            for quant in quantize if can_quantize else []:
                files.append(quantize_gguf(base, tmp / gguf_name(quant), quant).name)
        expected.status = COMPLETE
        expected.extra = {"shape": kind, "mlp_widths": em.mlp_widths, "files": files,
                          "bytes": {f: _size(tmp / f) for f in files},
                          "not_quantized": [] if can_quantize else quantize}
        write_manifest(tmp, expected)
    if quantize and not can_quantize:
        log.info("export.quantize=%s not made: llama.cpp is not installed here (`make engines` installs "
                 "llama-cpp-python into .venv-llama; `.venv-llama/bin/modegpt export` then adds them)", quantize)
    log.info("exported %s (%s) to %s", ", ".join(files), kind, target)
    return target


def _add_quantized(target: Path, dtype: str) -> Path:
    """Make the quantized GGUFs an export was written without (no llama.cpp then), each file atomically."""
    manifest = read_manifest(target)
    for quant in list(manifest.extra["not_quantized"]):
        made = quantize_gguf(target / gguf_name(dtype), target / gguf_name(quant), quant)
        manifest.extra["files"].append(made.name)
        manifest.extra["bytes"][made.name] = _size(made)
        manifest.extra["not_quantized"].remove(quant)
        write_manifest(target, manifest)
        log.info("added %s to export %s", made.name, target)
    return target


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size
