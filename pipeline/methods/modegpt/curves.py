"""MoDeGPT's module error curves for ``compression.allocation=error``: one layer's from its statistics, and every
layer's in one pass over the store, cached in a file named by what produced them.

The curves do not depend on the rate, so every rate of a sweep reads one file; under ``curve_scale=kl`` they are
scaled by the KL probe's sensitivities (``probe.py``), which have a cache of their own.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from pipeline.adapters import BlockShape
from pipeline.artifacts import ArtifactPaths, atomic_path, fingerprint
from pipeline.methods.base import SolveInputs
from pipeline.modegpt import (
    ModuleCurve,
    head_output_energy,
    leverage_keep_order,
    nested_mlp_residuals,
    qk_error_curve,
    vo_rank_residuals,
)
from pipeline.plan import curves_from_tensors, curves_to_tensors
from pipeline.progress import progress
from pipeline.solve_identity import PROBED_SCALES, curves_key

from .layer import DenseLayer
from .probe import probe_sensitivity
from .settings import ModegptSettings

log = logging.getLogger(__name__)

# One layer's curves from its sums (the layer's index, its sums, the settings).
LayerCurves = Callable[[int, dict[str, Tensor], ModegptSettings], dict[str, ModuleCurve]]


def _min_keep(full: int, max_sparsity: float) -> int:
    return max(1, math.ceil((1.0 - max_sparsity) * full))


def module_error_curves(stats: dict[str, Tensor], dense: DenseLayer, shape: BlockShape, settings: ModegptSettings,
                        max_sparsity: float) -> dict[str, ModuleCurve]:
    """Each module's output error against its kept width, as a relative change of the residual stream.

    A module's error E‖e‖² (per token, the solver's own objective) is scaled by E[1/‖h‖²] of the residual stream
    it is added to, because the next norm divides by ‖h‖: the same absolute error matters less where the stream
    is large. ``settings.curve_scale="kl"`` scales by tr F at the module's output instead, F the Fisher of the
    model's own predictions there (``stats["sensitivity"]``, from the KL probe), which also sees how errors propagate
    through the layers above.
    Modules the family does not let MoDeGPT cut offer only their full width.
    """
    heads = shape.heads
    tokens = float(stats["tokens"])
    mlp_corr, attn_corr = stats["mlp_gram"] / tokens, stats["attn_gram"] / tokens
    if settings.curve_scale in PROBED_SCALES:  # the caller adds the layer's [attention, MLP] sensitivities
        attn_scale, mlp_scale = (float(s) for s in stats["sensitivity"])
    else:
        attn_scale, mlp_scale = float(stats["inv_resid_in"]) / tokens, float(stats["inv_resid_out"]) / tokens

    full_mlp = shape.intermediate_size
    corr_down = mlp_corr @ dense.down
    order = leverage_keep_order(mlp_corr, settings.ridge_lambda)
    mlp_err = nested_mlp_residuals(mlp_corr, dense.down, order, settings.nystrom_ridge, corr_w=corr_down)
    widths = torch.arange(full_mlp + 1, device=mlp_err.device)
    mlp_err = torch.where(widths % settings.round_to == 0, mlp_err, torch.full_like(mlp_err, math.inf))
    mlp_err[-1] = 0.0  # keeping everything reproduces the dense module exactly (no refit, no ridge)
    head_energy = head_output_energy(attn_corr, dense.v, dense.o)
    qk_err = qk_error_curve(stats["q_energy"] / tokens, stats["k_energy"] / tokens, head_energy, heads.rope)
    vo_err = vo_rank_residuals(attn_corr, dense.v, dense.o, settings.eig_floor)
    params = {"mlp": shape.linear_params(1, 0, 0, {}), "qk": shape.linear_params(0, 1, 0, {}),
              "vo": shape.linear_params(0, 0, 1, {})}
    curves = {}
    for name, err, scale in (("mlp", mlp_err, mlp_scale), ("qk", qk_err, attn_scale), ("vo", vo_err, attn_scale)):
        full = err.numel() - 1
        keep_min = _min_keep(full, max_sparsity) if name in shape.compressible else full
        if name == "qk" and heads.rope:
            keep_min = min(full, keep_min + keep_min % 2)
        curves[name] = ModuleCurve(error=(err * scale).cpu(), unit_params=params[name], min_keep=keep_min)
    return curves




def cached_error_curves(inputs: SolveInputs, compression: Any, layer_curves: LayerCurves
                        ) -> list[dict[str, ModuleCurve]]:
    """Every layer's module error curves under ``compression`` (the config's, or a validated candidate's): one pass
    over the store, cached in a file named by ``curves_key`` and the store, so every rate of a sweep reuses them."""
    k, cfg, adapter = compression, inputs.cfg, inputs.adapter
    settings = ModegptSettings.from_config(k)
    key = {"store": inputs.store_fingerprint, **(curves_key(k) or {})}
    path = ArtifactPaths(cfg).module_curves(fingerprint(key))
    if path.exists():
        log.info("reusing module error curves %s", path)
        return curves_from_tensors(load_file(str(path)), adapter.num_layers)
    sensitivity = probe_sensitivity(inputs, k) if k.curve_scale in PROBED_SCALES else None
    curves = []
    layers = inputs.store.iter_layers(range(adapter.num_layers), verify=cfg.verify_store)
    with contextlib.closing(layers):
        for index, sums in progress(layers, desc="error curves", unit="layer", total=adapter.num_layers):
            start = time.perf_counter()
            if sensitivity is not None:
                sums = sums | {"sensitivity": sensitivity[index]}
            curves.append(layer_curves(index, sums, settings))
            log.info("error curves layer %d/%d (%.2f s)", index + 1, adapter.num_layers, time.perf_counter() - start)
    with atomic_path(path) as tmp:
        save_file(curves_to_tensors(curves), str(tmp), metadata={"key": json.dumps(key, sort_keys=True)})
    return curves
