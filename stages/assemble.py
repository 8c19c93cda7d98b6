"""Stage `assemble`: the solved factors as a Hugging Face checkpoint that loads with from_pretrained."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipeline.adapters import adapter_for
from pipeline.artifacts import (
    COMPLETE,
    ArtifactPaths,
    achieved_rates,
    atomic_dir,
    expected_checkpoint,
    prepare_output,
    write_manifest,
)
from pipeline.assembly import build_compressed_model, count_parameters, save_compressed
from pipeline.dense import load_model, load_tokenizer
from pipeline.readers import load_solution

log = logging.getLogger(__name__)

MAX_SHARD_SIZE = "5GB"


def run(cfg: Any, rate: float | None = None) -> Path:
    paths = ArtifactPaths(cfg)
    plans, solutions, solve_manifest = load_solution(cfg, rate)
    expected = expected_checkpoint(cfg, solve_manifest.fingerprint)
    target = paths.checkpoint(rate)
    if prepare_output(target, expected, cfg.overwrite) == "skip":
        log.info("reusing compressed checkpoint %s", target)
        return target
    model = load_model(cfg, paths.dense_model)
    adapter = adapter_for(model, cfg.model.family)
    dense_params, dense_block = adapter.total_params(), adapter.block_linear_params()
    compressed = build_compressed_model(model, adapter, plans, solutions)
    params = count_parameters(compressed)
    target_rate = solve_manifest.config["rate"]
    expected.status = COMPLETE
    expected.extra = {
        "target_block_rate": target_rate,
        **achieved_rates(dense_params, dense_block, params),
        "layer_dims": [p.to_json() for p in plans],
    }
    with atomic_dir(target) as tmp:
        save_compressed(compressed, load_tokenizer(cfg, paths.dense_model), tmp, max_shard_size=MAX_SHARD_SIZE)
        write_manifest(tmp, expected)
    log.info("compressed checkpoint %s: %d -> %d parameters; block rate target %.3f, achieved %.4f "
             "(%.4f of the whole model)", target, dense_params, params, target_rate,
             expected.extra["achieved_block_rate"], expected.extra["achieved_model_rate"])
    return target
