"""Layer-by-layer capture: one block on the device at a time, hidden states carried from block to block."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from pipeline.adapters import ModelAdapter

from .stats import LayerStats, LayerStatsCollector, stat_shapes

log = logging.getLogger(__name__)

LayerSink = Callable[[int, dict[str, torch.Tensor], float], None]
BlockRewrite = Callable[[int], None]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _all_reduce(stats: LayerStats) -> None:
    if _distributed():
        for t in stats.as_dict().values():
            dist.all_reduce(t)


@torch.no_grad()
def capture_layers(
    adapter: ModelAdapter,
    input_ids: torch.Tensor,
    sink: LayerSink,
    device: torch.device,
    batch_size: int,
    start_layer: int = 0,
    rewrite: BlockRewrite | None = None,
    *,
    precision: str,
) -> None:
    """Run the dense model block by block over ``input_ids`` and hand each layer's FP64 sums to ``sink``.

    Layers before ``start_layer`` (already captured) are only replayed, forward-only, to rebuild the
    hidden states: deterministic kernels make the resumed sums identical to an uninterrupted run.
    ``rewrite(index)``, when given, changes block ``index`` in place after its sums reached ``sink`` (and before
    a replay): the next block's inputs are then the rewritten block's outputs, which is sequential calibration
    (each layer's statistics taken on the outputs of the already-compressed layers below it).
    ``precision``: of each batch's Gram products (``PRODUCT_PRECISIONS``), added to FP64 sums; required, so no
    caller forms its products at a precision other than ``calibration.product_precision`` by leaving it out.
    Under torch.distributed each rank passes its own shard of samples; sums are all-reduced before
    ``sink`` is called (on every rank: the caller decides who writes).
    """
    heads, shape = adapter.head_layout(), adapter.block_shape()
    shapes = stat_shapes(shape.hidden_size, shape.intermediate_size, heads)
    adapter.move_non_layer_modules(device)
    hidden: list[torch.Tensor] = []
    block_kwargs: dict[int, dict] = {}  # the keyword arguments blocks get depend only on the batch shape
    for batch in input_ids.split(batch_size):
        h, kwargs = adapter.block_inputs(batch.to(device))
        hidden.append(h)
        block_kwargs.setdefault(batch.shape[0], kwargs)
    tokens_per_layer = input_ids.numel()
    layers = adapter.decoder_layers()
    bar = tqdm(range(len(layers)), desc="capture", unit="layer", disable=None)
    for index in bar:
        block = layers[index]
        home = next(block.parameters()).device
        block.to(device)
        start = time.perf_counter()
        if index < start_layer:
            if rewrite is not None:
                rewrite(index)
            for i, h in enumerate(hidden):
                hidden[i] = adapter.run_block(block, h, block_kwargs[h.shape[0]])
            block.to(home)
            bar.set_postfix_str(f"replayed layer {index}")
            continue
        stats = LayerStats.zeros(shapes, device)
        with LayerStatsCollector(adapter.layer(index), heads, stats, precision) as collector:
            for i, h in enumerate(hidden):
                out = adapter.run_block(block, h, block_kwargs[h.shape[0]])
                collector.add_block_influence(h, out)
                if rewrite is None:
                    hidden[i] = out
            collector.finish()
        _all_reduce(stats)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        sink(index, stats.as_dict(), seconds)
        if rewrite is not None:
            rewrite(index)
            for i, h in enumerate(hidden):
                hidden[i] = adapter.run_block(block, h, block_kwargs[h.shape[0]])
        block.to(home)
        rate = tokens_per_layer / max(seconds, 1e-9)
        log.info("capture layer %d/%d: %.2f s, %.0f tokens/s (this rank)", index + 1, len(layers), seconds, rate)
