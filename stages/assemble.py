"""Stage `assemble`: the solved factors as a Hugging Face checkpoint that loads with from_pretrained."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipeline.adapters import adapter_for
from pipeline.artifacts import (
    COMPLETE,
    ArtifactError,
    ArtifactPaths,
    Manifest,
    atomic_dir,
    prepare_output,
    require_complete,
    write_manifest,
)
from pipeline.dense import load_model, load_tokenizer
from pipeline.modeling import build_compressed_model, count_parameters, save_compressed

from .solve import load_solution

log = logging.getLogger(__name__)

STAGE = "assemble"
VERSION = "assemble-2"  # 2: the attention finds the KV cache by type (transformers 5.24 renamed it)
MAX_SHARD_SIZE = "5GB"


def expected_manifest(cfg: Any, solve_fingerprint: str) -> Manifest:
    return Manifest(stage=STAGE, code_version=VERSION, config={"dtype": cfg.model.dtype},
                    inputs={"solve": solve_fingerprint})


def run(cfg: Any, rate: float | None = None) -> Path:
    paths = ArtifactPaths(cfg)
    plans, solutions, solve_manifest = load_solution(cfg, rate)
    expected = expected_manifest(cfg, solve_manifest.fingerprint)
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
        "achieved_block_rate": (dense_params - params) / dense_block,
        "achieved_model_rate": (dense_params - params) / dense_params,
        "dense_params": dense_params,
        "compressed_params": params,
        "layer_dims": [p.to_json() for p in plans],
    }
    with atomic_dir(target) as tmp:
        save_compressed(compressed, load_tokenizer(cfg, paths.dense_model), tmp, max_shard_size=MAX_SHARD_SIZE)
        write_manifest(tmp, expected)
    log.info("compressed checkpoint %s: %d -> %d parameters; block rate target %.3f, achieved %.4f "
             "(%.4f of the whole model)", target, dense_params, params, target_rate,
             expected.extra["achieved_block_rate"], expected.extra["achieved_model_rate"])
    return target


def checkpoint_dir(cfg: Any, rate: float | None = None) -> Path:
    """A complete compressed checkpoint for this config, refusing an unfinished or foreign one."""
    target = ArtifactPaths(cfg).checkpoint(rate)
    found = require_complete(target, STAGE, "compressed checkpoint")
    solve_manifest = require_complete(ArtifactPaths(cfg).solve(rate), "solve", "solve artifact")
    if found.fingerprint != expected_manifest(cfg, solve_manifest.fingerprint).fingerprint:
        raise ArtifactError(f"{target} was assembled from another solve: rerun `modegpt assemble overwrite=[assemble]`")
    return target
