"""Stage `solve`: per-layer sparsities and decompositions from the weights and the correlation store only.

No forward pass: a second compression rate costs only this stage. Each layer's factors are written
atomically as it finishes (``layers/NNNNN.safetensors``), so an interrupted solve resumes at the next layer.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from pipeline import solve_identity
from pipeline.adapters import adapter_for
from pipeline.artifacts import (
    CANDIDATES_DIR,
    COMPLETE,
    PLAN,
    ArtifactError,
    ArtifactPaths,
    achieved_rates,
    atomic_path,
    atomic_write_json,
    expected_solve,
    fingerprint,
    layer_file,
    prepare_output,
    read_json,
    resolve_rate,
    write_manifest,
)
from pipeline.capture.heldout_kl import heldout_kl
from pipeline.capture.runner import capture_layers
from pipeline.capture.sampled_fisher import sampled_fisher_sensitivity
from pipeline.dense import load_model, peak_device_memory, resolve_device
from pipeline.methods import Method, method_named
from pipeline.modegpt import ModuleCurve
from pipeline.plan import LayerPlan, curves_from_tensors, curves_to_tensors
from pipeline.progress import progress
from pipeline.readers import block_influence_of, heldout_tokens, layer_errors, load_tokens, open_store, stored_numel
from pipeline.solve_identity import PROBED_SCALES, candidate, curves_key, probe_key
from pipeline.solver import SolverSettings, removed_share

log = logging.getLogger(__name__)


def run(cfg: Any, rate: float | None = None) -> Path:
    paths = ArtifactPaths(cfg)
    store, store_manifest = open_store(cfg)
    log.info("using correlation store %s (fingerprint %s): %s", store.path, store_manifest.fingerprint,
             "layer statistics recaptured on the compressed layers (compression.sequential)"
             if cfg.compression.sequential else "no forward pass needed")
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
    settings = SolverSettings.from_config(k)
    block_influence = block_influence_of(cfg, store, adapter.num_layers)
    candidates = {name: method.plan(block_influence, target_rate, view, adapter,
                                    _module_curves(cfg, view, store, store_manifest.fingerprint, adapter, method,
                                                   device) if view.allocation == "error" else None)
                  for name, view in _candidate_views(k).items()}
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
            chosen, validation = _validate(cfg, store, adapter, method, candidates, settings, device, target)
        plan_doc = _plan_doc(k, target_rate, adapter, block_influence, chosen, candidates[chosen])
        if validation is not None:
            plan_doc["validation"] = validation
        atomic_write_json(target / PLAN, plan_doc)
    plans = candidates[chosen]

    errors = {i: layer_errors(layer_file(target, i)) for i in range(num_layers) if layer_file(target, i).exists()}
    dense_total, dense_block = adapter.total_params(), adapter.block_linear_params()  # sequential edits the blocks
    t0 = time.perf_counter()
    if k.sequential:
        _solve_sequential(cfg, method, adapter, plans, settings, device, target, errors)
    else:
        _solve_from_store(cfg, store, method, adapter, plans, settings, device, target, errors, target_rate)

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


def _solve_from_store(cfg: Any, store: Any, method: Method, adapter: Any, plans: list[LayerPlan],
                      settings: SolverSettings, device: torch.device, target: Path, errors: dict[int, Any],
                      target_rate: float) -> None:
    """Every layer not yet in ``errors`` from the store's sums (the dense model's statistics)."""
    num_layers = adapter.num_layers
    todo = [i for i in range(num_layers) if i not in errors]
    # The next layer's sums load in the background while this one is solved (weights-only methods need none).
    layer_sums: Iterator[tuple[int, dict[str, torch.Tensor] | None]] = (
        store.iter_layers(todo, verify=cfg.verify_store)
        if method.needs_store else ((i, None) for i in todo))
    with contextlib.closing(layer_sums):  # on an error, stop the read-ahead now, not when the traceback goes
        for index, sums in progress(layer_sums, desc=f"solve r={target_rate:g}", unit="layer", total=num_layers,
                                    initial=len(errors)):
            errors[index] = _solve_layer(method, adapter, index, sums, plans[index], settings, device, target)


def _solve_sequential(cfg: Any, method: Method, adapter: Any, plans: list[LayerPlan], settings: SolverSettings,
                      device: torch.device, target: Path, errors: dict[int, Any]) -> None:
    """``compression.sequential``: layer l's sums are taken on the outputs of layers 0..l-1 as compressed (a
    capture per rate, in memory), solved, and written into block l before layer l + 1 is captured. A resumed
    solve rebuilds the compressed layers below from their files, so it continues exactly where it stopped."""
    num_layers = adapter.num_layers
    start = next((i for i in range(num_layers) if i not in errors), num_layers)
    if start == num_layers:
        return
    input_ids, _ = load_tokens(cfg)

    def solve(index: int, sums: dict[str, torch.Tensor], seconds: float) -> None:
        log.info("sequential capture of layer %d/%d: %.2f s", index + 1, num_layers, seconds)
        errors[index] = _solve_layer(method, adapter, index, sums, plans[index], settings, device, target)

    def compress(index: int) -> None:
        method.apply_in_place(adapter.layer(index), adapter, load_file(str(layer_file(target, index))))

    capture_layers(adapter, input_ids, solve, device, cfg.calibration.batch_size, start, rewrite=compress)


def _solve_layer(method: Method, adapter: Any, index: int, sums: dict[str, torch.Tensor] | None, plan: LayerPlan,
                 settings: SolverSettings, device: torch.device, target: Path) -> dict[str, float]:
    """Solve one layer and write its factors atomically; returns its reconstruction errors."""
    start = time.perf_counter()
    tensors, err = method.solve_layer(adapter.layer(index), adapter, sums, plan, settings, device)
    with atomic_path(layer_file(target, index)) as tmp:
        save_file(tensors, str(tmp), metadata={"errors": json.dumps(err)})
    log.info("solve layer %d/%d: phi=%.3f mlp=%d qk=%d v=%d errors %s (%.2f s)", index + 1, adapter.num_layers,
             plan.sparsity, plan.mlp_width, plan.qk_dim, plan.v_dim,
             ", ".join(f"{n}={v:.4f}" for n, v in err.items()), time.perf_counter() - start)
    return err


def _module_curves(cfg: Any, k: Any, store: Any, store_fingerprint: str, adapter: Any, method: Method,
                   device: torch.device) -> list[dict[str, ModuleCurve]]:
    """Every layer's module error curves for allocation=error under compression settings ``k`` (the config's, or a
    validated candidate's): one pass over the store, cached in a file named by what produced it (they do not
    depend on the rate, so every rate of a sweep reuses them)."""
    settings = SolverSettings.from_config(k)
    key = {"store": store_fingerprint, **(curves_key(k) or {})}
    path = ArtifactPaths(cfg).module_curves(fingerprint(key))
    if path.exists():
        log.info("reusing module error curves %s", path)
        return curves_from_tensors(load_file(str(path)), adapter.num_layers)
    sensitivity = (_output_sensitivity(cfg, k, store_fingerprint, adapter, device)
                   if k.curve_scale in PROBED_SCALES else None)
    curves = []
    layers = store.iter_layers(range(adapter.num_layers), verify=cfg.verify_store)
    with contextlib.closing(layers):
        for index, sums in progress(layers, desc="error curves", unit="layer", total=adapter.num_layers):
            start = time.perf_counter()
            if sensitivity is not None:
                sums = sums | {"sensitivity": sensitivity[index]}
            curves.append(method.module_curves(adapter.layer(index), adapter, sums, settings, k.max_sparsity, device))
            log.info("error curves layer %d/%d (%.2f s)", index + 1, adapter.num_layers, time.perf_counter() - start)
    with atomic_path(path) as tmp:
        save_file(curves_to_tensors(curves), str(tmp), metadata={"key": json.dumps(key, sort_keys=True)})
    return curves


def _output_sensitivity(cfg: Any, k: Any, store_fingerprint: str, adapter: Any, device: torch.device
                        ) -> torch.Tensor:
    """The KL probe's [layers, 2] sensitivities, in a file of their own, keyed by ``probe_key``: the probe depends
    on the calibration tokens and the model only, so every solver setting reuses one probe, the dearest part of the
    curves."""
    key = {"store": store_fingerprint, **(probe_key(k) or {})}
    path = ArtifactPaths(cfg).output_sensitivity(fingerprint(key))
    made_for = json.dumps(key, sort_keys=True)
    if path.exists():
        with safe_open(str(path), "pt") as handle:
            matches = (handle.metadata() or {}).get("key") == made_for
            sensitivity = handle.get_tensor("sensitivity")
        if matches and sensitivity.shape == (adapter.num_layers, 2):
            log.info("reusing the KL probe's sensitivities %s", path)
            return sensitivity
        log.warning("%s was made for another store or probe setting: probing again", path)
    sensitivity = sampled_fisher_sensitivity(adapter, load_tokens(cfg)[0], cfg.calibration.batch_size, device,
                                             sequences=solve_identity.PROBE_SEQUENCES)
    with atomic_path(path) as tmp:
        save_file({"sensitivity": sensitivity.contiguous()}, str(tmp), metadata={"key": made_for})
    return sensitivity


def _candidate_views(k: Any) -> dict[str, Any]:
    """The compression settings each plan is made under: the configured allocation's own, or under
    allocation=validated one per candidate."""
    if k.allocation != "validated":
        return {k.allocation: k}
    return {name: candidate(k, name) for name in k.candidates}


def _plan_doc(k: Any, target_rate: float, adapter: Any, block_influence: torch.Tensor, chosen: str,
              plans: list[LayerPlan]) -> dict[str, Any]:
    """plan.json's content: the kept widths of every layer and what chose them."""
    shape, heads = adapter.block_shape(), adapter.head_layout()
    return {"rate": target_rate, "allocation": k.allocation, "chosen": chosen, "method": k.method,
            "dense": {"mlp_width": shape.intermediate_size, "qk_dim": heads.head_dim, "v_dim": heads.head_dim},
            "block_influence": block_influence.tolist(), "layers": [p.to_json() for p in plans]}


def _validate(cfg: Any, store: Any, adapter: Any, method: Method, candidates: dict[str, list[LayerPlan]],
              settings: SolverSettings, device: torch.device, target: Path) -> tuple[str, dict[str, Any]]:
    """allocation=validated: solve every candidate layer by layer (a plan two candidates share, once), score each
    by the KL of its compressed model to the dense one on held-out sequences, and move the winner's solved layers
    into the solve (so the winner costs no second solve). Returns the winner and the table for plan.json."""
    k = cfg.compression
    start = time.perf_counter()
    heldout = heldout_tokens(cfg, k.validation_sequences)
    scratch = target / CANDIDATES_DIR
    shutil.rmtree(scratch, ignore_errors=True)
    files: dict[str, dict[int, Path]] = {name: {} for name in candidates}

    def variants(index: int) -> dict[str, dict[str, torch.Tensor]]:
        sums = store.read_layer(index, verify=cfg.verify_store)
        solved: dict[str, Path] = {}  # one solve per distinct plan of this layer
        for name, plans in candidates.items():
            plan = json.dumps(plans[index].to_json(), sort_keys=True)
            if plan not in solved:
                _solve_layer(method, adapter, index, sums, plans[index], settings, device, scratch / name)
                solved[plan] = layer_file(scratch / name, index)
            files[name][index] = solved[plan]
        loaded = {path: load_file(str(path)) for path in solved.values()}
        return {name: loaded[files[name][index]] for name in candidates}

    def apply(layer: Any, tensors: dict[str, torch.Tensor]) -> None:
        method.apply_in_place(layer, adapter, tensors)

    kl = heldout_kl(adapter, heldout, cfg.calibration.batch_size, device, variants, apply)
    chosen = min(kl, key=kl.__getitem__)
    # under compression.sequential the candidates, solved from the dense store, only choose the plan: its layers are
    # solved again on the compressed layers below them
    for index, path in files[chosen].items() if not k.sequential else ():
        with atomic_path(layer_file(target, index)) as tmp:  # a plan two candidates share has one file: copy
            shutil.copyfile(path, tmp)
    shutil.rmtree(scratch)
    seconds = time.perf_counter() - start
    removed = {name: removed_share(plans, adapter.block_shape()) for name, plans in candidates.items()}
    table = "\n".join(f"  {name:<10} KL {value:.5f}  block params removed {removed[name]:.4f}"
                      f"{'  <- chosen' if name == chosen else ''}"
                      for name, value in sorted(kl.items(), key=lambda item: item[1]))
    log.info("held-out validation (%d sequences x %d tokens, %.1f s): mean KL to the dense model per token\n%s",
             *heldout.shape, seconds, table)
    return chosen, {"sequences": int(heldout.shape[0]), "positions": int(heldout.shape[1]),
                    "kl_to_dense": kl, "block_params_removed": removed, "seconds": round(seconds, 3)}
