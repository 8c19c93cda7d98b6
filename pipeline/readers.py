"""Reading each stage's artifact as the next stage's input, refusing a missing, unfinished or foreign one.

Stages import their inputs from here, never from another stage. It stands above ``pipeline.artifacts`` (names,
paths and expected manifests) and the correlation store, which both write through ``pipeline.artifacts``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from pipeline.artifacts.atomic import atomic_path, fingerprint
from pipeline.artifacts.expected import (
    ASSEMBLE,
    CAPTURE,
    SOLVE,
    TOKENIZE,
    expected_checkpoint,
    expected_solve,
    expected_store,
    expected_tokens,
)
from pipeline.artifacts.layout import ArtifactPaths, layer_file
from pipeline.artifacts.manifest import ArtifactError, Manifest, describe_mismatch, read_json, require_complete
from pipeline.capture import CorrelationStore
from pipeline.plan import LayerPlan, LayerSolution


def load_tokens(cfg: Any) -> tuple[torch.Tensor, Manifest]:
    """The calibration windows [N, L], refusing tokens made for another model or calibration config."""
    paths = ArtifactPaths(cfg)
    found = require_complete(paths.tokens, TOKENIZE, "calibration tokens")
    expected = expected_tokens(cfg)
    if found.fingerprint != expected.fingerprint:  # its directory is named for this config: stale code or edited
        raise ArtifactError(
            f"calibration tokens at {paths.tokens} do not match this config "
            f"({describe_mismatch(paths.tokens, expected)}): rerun `modegpt tokenize overwrite=[tokenize]`"
        )
    ids = load_file(str(paths.tokens_file))["input_ids"]
    c = cfg.calibration
    if tuple(ids.shape) != (c.num_samples, c.seq_len):
        raise ArtifactError(f"{paths.tokens_file} holds {tuple(ids.shape)}, expected "
                            f"({c.num_samples}, {c.seq_len}): the file is corrupted")
    return ids, found


def open_store(cfg: Any) -> tuple[CorrelationStore, Manifest]:
    """The complete store for this config, refusing one captured for another model or calibration."""
    paths = ArtifactPaths(cfg)
    found = require_complete(paths.store, CAPTURE, "correlation store")
    _, tokens_manifest = load_tokens(cfg)
    expected = expected_store(cfg, tokens_manifest.fingerprint)
    if found.fingerprint != expected.fingerprint:
        raise ArtifactError(
            f"correlation store {paths.store} was captured for another model or calibration "
            f"({describe_mismatch(paths.store, expected)}): rerun `modegpt capture overwrite=[capture]`"
        )
    return CorrelationStore(paths.store), found


def stored_numel(path: Path) -> int:
    """Elements stored in a safetensors file, read from its header only."""
    with safe_open(str(path), framework="pt") as f:
        return sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())


def layer_errors(path: Path) -> dict[str, float]:
    """The reconstruction errors a solved layer file records in its metadata."""
    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {}).get("errors", "{}"))


def load_solution(cfg: Any, rate: float | None = None) -> tuple[list[LayerPlan], list[LayerSolution], Manifest]:
    """The plan and per-layer factors of a complete solve for this config, refusing a foreign or partial one."""
    paths = ArtifactPaths(cfg)
    target = paths.solve(rate)
    found = require_complete(target, SOLVE, "solve artifact")
    _, store_manifest = open_store(cfg)
    expected = expected_solve(cfg, store_manifest.fingerprint, rate)
    if found.fingerprint != expected.fingerprint:
        raise ArtifactError(f"solve artifact {target} was produced for another model, store or solver config "
                            f"({describe_mismatch(target, expected)}): rerun `modegpt solve overwrite=[solve]`")
    plan_doc = read_json(paths.plan(rate))
    plans = [LayerPlan(**p) for p in plan_doc["layers"]]
    from pipeline.methods import method_named  # the registry imports the solver and model code: only here

    if not method_named(plan_doc["method"]).assemblable:
        raise ArtifactError(f"{target} holds a {plan_doc['method']} baseline, which does not assemble into a "
                            "checkpoint (benchmarks/quality.py evaluates it in memory)")
    solutions = [LayerSolution.from_tensors(load_file(str(layer_file(target, i)))) for i in range(len(plans))]
    return plans, solutions, found


def checkpoint_dir(cfg: Any, rate: float | None = None) -> Path:
    """A complete compressed checkpoint for this config, refusing an unfinished or foreign one."""
    paths = ArtifactPaths(cfg)
    target = paths.checkpoint(rate)
    found = require_complete(target, ASSEMBLE, "compressed checkpoint")
    solve_manifest = require_complete(paths.solve(rate), SOLVE, "solve artifact")
    if found.fingerprint != expected_checkpoint(cfg, solve_manifest.fingerprint).fingerprint:
        raise ArtifactError(f"{target} was assembled from another solve: rerun `modegpt assemble overwrite=[assemble]`")
    return target


def heldout_tokens(cfg: Any, count: int) -> torch.Tensor:
    """[count, L] held-out windows of the calibration source (allocation=validated): the calibration permutation's
    next ones, so no captured token is among them. Sampled once, by the first solve that asks, beside the solves
    (``ArtifactPaths.heldout_tokens``); a file made by another sampling rule or count is sampled again."""
    from pipeline.calibration import calibration_stream, sample_windows
    from pipeline.dense import load_tokenizer
    from pipeline.solve_identity import VALIDATION_VERSION

    load_tokens(cfg)  # the calibration windows these are held out from exist and are current
    paths, c = ArtifactPaths(cfg), cfg.calibration
    made_for = {"calibration": paths.calibration_key, "count": count, "version": VALIDATION_VERSION}
    key = json.dumps(made_for, sort_keys=True)
    path = paths.heldout_tokens(fingerprint(made_for))
    if path.exists():
        with safe_open(str(path), "pt") as handle:
            if (handle.metadata() or {}).get("key") == key:
                ids = handle.get_tensor("input_ids")
                if tuple(ids.shape) == (count, c.seq_len):
                    return ids
    tokenizer = load_tokenizer(cfg, paths.dense_model)
    _, stream = calibration_stream(tokenizer, c.source, c.path)
    ids = sample_windows(stream, c.num_samples, c.seq_len, c.seed, heldout=count)
    with atomic_path(path) as tmp:
        save_file({"input_ids": ids}, str(tmp), metadata={"key": key})
    return ids


def block_influence_of(cfg: Any, store: CorrelationStore, num_layers: int) -> torch.Tensor:
    """Each layer's Block Influence (1 − mean cosine of its input and output) from the store's sums."""
    scalars = [store.read_layer(i, verify=cfg.verify_store, names=("bi_cos", "tokens")) for i in range(num_layers)]
    return torch.stack([1.0 - s["bi_cos"] / s["tokens"] for s in scalars]).flatten()
