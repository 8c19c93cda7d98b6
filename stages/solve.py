"""Stage `solve`: load the dense model and its correlation store, plan every layer's widths, solve each layer,
write the manifest.

The method (``pipeline.methods``) says how to plan and what one layer is; ``pipeline.solving`` runs the layers
from the store, sequentially calibrated, or as validated candidates. Each layer's factors are written atomically
as it finishes (``layers/NNNNN.safetensors``), so an interrupted solve resumes at the next layer. From the store
alone a second rate costs only this stage; the KL probe (curve_scale=kl, once per store), sequential calibration
and validation run forward passes.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from pipeline.adapters import adapter_for
from pipeline.artifacts import (
    COMPLETE,
    PLAN,
    ArtifactError,
    ArtifactPaths,
    achieved_rates,
    atomic_write_json,
    expected_solve,
    layer_file,
    prepare_output,
    read_json,
    resolve_rate,
    write_manifest,
)
from pipeline.dense import load_model, peak_device_memory, resolve_device
from pipeline.methods import SolveInputs, method_named
from pipeline.plan import LayerPlan
from pipeline.readers import block_influence_of, layer_errors, open_store, stored_numel
from pipeline.solving.layers import solve_from_store
from pipeline.solving.sequential import solve_sequentially
from pipeline.solving.validated import candidate_views, validate_candidates

log = logging.getLogger(__name__)


def run(cfg: Any, rate: float | None = None) -> Path:
    paths = ArtifactPaths(cfg)
    store, store_manifest = open_store(cfg)
    log.info("using correlation store %s (fingerprint %s): %s", store.path, store_manifest.fingerprint,
             "layer statistics recaptured on the compressed layers (compression.sequential)"
             if cfg.compression.sequential else "every layer from the store")
    expected = expected_solve(cfg, store_manifest.fingerprint, rate)
    target = paths.solve(rate)
    action = prepare_output(target, expected, cfg.overwrite)
    if action == "skip":
        log.info("reusing solve artifact %s", target)
        return target
    k = cfg.compression
    target_rate = resolve_rate(cfg, rate)
    device = resolve_device(cfg.device)
    model = load_model(cfg, paths.dense_model)
    adapter = adapter_for(model, cfg.model.family)
    num_layers = adapter.num_layers
    method = method_named(k.method)
    settings = method.settings(k)
    block_influence = block_influence_of(cfg, store, adapter.num_layers)
    inputs = SolveInputs(cfg, adapter, store, store_manifest.fingerprint, block_influence, device)
    candidates = {name: method.plan(inputs, target_rate, view) for name, view in candidate_views(k).items()}
    target.mkdir(parents=True, exist_ok=True)
    if action == "resume" and (target / PLAN).exists():
        plan_doc = read_json(target / PLAN)
        chosen = plan_doc.get("chosen", k.allocation)
        recomputed = _plan_doc(k, target_rate, adapter, block_influence, chosen, candidates.get(chosen, []))
        if {n: v for n, v in plan_doc.items() if n != "validation"} != json.loads(json.dumps(recomputed)):
            raise ArtifactError(f"{target / PLAN} differs from the recomputed plan: rerun with overwrite=[solve]")
        log.info("resuming solve in %s", target)
    else:
        write_manifest(target, expected)
        chosen, validation = k.allocation, None
        if k.allocation == "validated":
            chosen, validation = validate_candidates(cfg, store, adapter, method, candidates, settings, device, target)
        plan_doc = _plan_doc(k, target_rate, adapter, block_influence, chosen, candidates[chosen])
        if validation is not None:
            plan_doc["validation"] = validation
        atomic_write_json(target / PLAN, plan_doc)
    plans = candidates[chosen]

    errors = {i: layer_errors(layer_file(target, i)) for i in range(num_layers) if layer_file(target, i).exists()}
    dense_total, dense_block = adapter.total_params(), adapter.block_linear_params()  # sequential edits the blocks
    t0 = time.perf_counter()
    if k.sequential:
        solve_sequentially(cfg, method, adapter, plans, settings, device, target, errors)
    else:
        solve_from_store(cfg, store, method, adapter, plans, settings, device, target, errors, target_rate)

    removed = method.removed_params(adapter, plans, [stored_numel(layer_file(target, i)) for i in range(num_layers)])
    rates = achieved_rates(dense_total, dense_block, dense_total - removed)
    expected.status = COMPLETE
    expected.extra = {
        "target_rate": target_rate,
        **rates,
        "errors": [errors[i] for i in range(num_layers)],
        "seconds": round(time.perf_counter() - t0, 3),
        "sequential": bool(k.sequential),
        "peak_device_bytes": peak_device_memory(device),
        **({"validation": plan_doc["validation"]} if "validation" in plan_doc else {}),
    }
    write_manifest(target, expected)
    log.info("solve complete: target %.3f, achieved %.4f of block parameters (%.4f of the whole model) -> %s",
             target_rate, rates["achieved_block_rate"], rates["achieved_model_rate"], target)
    return target


def _plan_doc(k: Any, target_rate: float, adapter: Any, block_influence: torch.Tensor, chosen: str,
              plans: list[LayerPlan]) -> dict[str, Any]:
    """plan.json's content: the kept widths of every layer and what chose them."""
    shape, heads = adapter.block_shape(), adapter.head_layout()
    return {"rate": target_rate, "allocation": k.allocation, "chosen": chosen, "method": k.method,
            "dense": {"mlp_width": shape.intermediate_size, "qk_dim": heads.head_dim, "v_dim": heads.head_dim},
            "block_influence": block_influence.tolist(), "layers": [p.to_json() for p in plans]}
