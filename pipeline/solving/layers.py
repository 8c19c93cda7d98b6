"""One layer solved and written atomically, and every layer solved from the correlation store."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from pipeline.adapters import ModelAdapter
from pipeline.artifacts import atomic_path, layer_file
from pipeline.methods import Method
from pipeline.plan import LayerPlan
from pipeline.progress import progress

log = logging.getLogger(__name__)


def solve_layer(method: Method, adapter: ModelAdapter, index: int, sums: dict[str, torch.Tensor] | None,
                plan: LayerPlan, settings: Any, device: torch.device, target: Path) -> dict[str, float]:
    """Solve one layer and write its factors atomically (``layers/NNNNN.safetensors``, so an interrupted solve
    resumes at the next layer); returns its reconstruction errors."""
    start = time.perf_counter()
    tensors, err = method.solve_layer(adapter.layer(index), adapter, sums, plan, settings, device)
    with atomic_path(layer_file(target, index)) as tmp:
        save_file(tensors, str(tmp), metadata={"errors": json.dumps(err)})
    log.info("solve layer %d/%d: phi=%.3f mlp=%d qk=%d v=%d errors %s (%.2f s)", index + 1, adapter.num_layers,
             plan.sparsity, plan.mlp_width, plan.qk_dim, plan.v_dim,
             ", ".join(f"{n}={v:.4f}" for n, v in err.items()), time.perf_counter() - start)
    return err


def solve_from_store(cfg: Any, store: Any, method: Method, adapter: ModelAdapter, plans: list[LayerPlan],
                     settings: Any, device: torch.device, target: Path, errors: dict[int, Any],
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
            errors[index] = solve_layer(method, adapter, index, sums, plans[index], settings, device, target)
