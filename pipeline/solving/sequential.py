"""Sequential calibration (``compression.sequential``), for any method that can write a solved layer into its
block: layer l's statistics are taken on the outputs of layers 0..l-1 as compressed, a capture per rate in memory."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from pipeline.adapters import ModelAdapter
from pipeline.artifacts import layer_file
from pipeline.capture.runner import capture_layers
from pipeline.methods import Method
from pipeline.plan import LayerPlan
from pipeline.readers import load_tokens
from pipeline.solving import layers

log = logging.getLogger(__name__)


def solve_sequentially(cfg: Any, method: Method, adapter: ModelAdapter, plans: list[LayerPlan], settings: Any,
                       device: torch.device, target: Path, errors: dict[int, Any]) -> None:
    """Capture layer l on the compressed layers below it, solve it, and write it into block l before layer l + 1 is
    captured. A resumed solve rebuilds the compressed layers below from their files, so it continues exactly where
    it stopped."""
    num_layers = adapter.num_layers
    start = next((i for i in range(num_layers) if i not in errors), num_layers)
    if start == num_layers:
        return
    input_ids, _ = load_tokens(cfg)

    def solve(index: int, sums: dict[str, torch.Tensor], seconds: float) -> None:
        log.info("sequential capture of layer %d/%d: %.2f s", index + 1, num_layers, seconds)
        errors[index] = layers.solve_layer(method, adapter, index, sums, plans[index], settings, device, target)

    def compress(index: int) -> None:
        method.apply_in_place(adapter.layer(index), adapter, load_file(str(layer_file(target, index))))

    capture_layers(adapter, input_ids, solve, device, cfg.calibration.batch_size, start, rewrite=compress,
                   precision=cfg.calibration.product_precision)
