"""Stage `tokenize`: sample N calibration windows of L tokens once; every later stage reads them."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from pipeline.artifacts import (
    COMPLETE,
    TOKENS_FILE,
    ArtifactPaths,
    atomic_dir,
    expected_tokens,
    prepare_output,
    write_manifest,
)
from pipeline.calibration import calibration_stream, check_calibration_path, sample_windows
from pipeline.dense import load_tokenizer
from pipeline.inputs import check_model_source

log = logging.getLogger(__name__)


def run(cfg: Any) -> Path:
    # Missing inputs first: the manifest comparison below would report them as "a different job".
    check_calibration_path(cfg.calibration.source, cfg.calibration.path)
    check_model_source(cfg, hub=False)
    paths = ArtifactPaths(cfg)
    expected = expected_tokens(cfg)
    target = paths.tokens
    if prepare_output(target, expected, cfg.overwrite) == "skip":
        log.info("reusing calibration tokens at %s", target)
        return target
    c = cfg.calibration
    tokenizer = load_tokenizer(cfg, paths.dense_model)
    documents, stream = calibration_stream(tokenizer, c.source, c.path)
    windows = sample_windows(stream, c.num_samples, c.seq_len, c.seed)
    log.info("calibration: %d documents, %d tokens -> %d x %d tokens (seed %d)",
             len(documents), stream.numel(), c.num_samples, c.seq_len, c.seed)
    expected.status = COMPLETE
    expected.extra = {"documents": len(documents), "stream_tokens": int(stream.numel())}
    with atomic_dir(target) as tmp:
        save_file({"input_ids": windows}, str(tmp / TOKENS_FILE))
        write_manifest(tmp, expected)
    return target
