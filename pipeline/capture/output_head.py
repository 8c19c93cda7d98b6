"""The model's next-token distribution from its last block's output: what every forward-pass measurement that
compares output distributions (the KL probe, by its backward pass or by noise; the held-out validation of a plan)
shares.

The blocks run one at a time, outside the model (layer by layer, as the capture does); what follows them (final norm,
head) runs through the model's own forward with every block replaced by a replay of the given output, so no family's
final norm or logit scaling is copied here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

LOGIT_BUDGET = 1 << 24  # logits (positions × vocabulary) compared at once, in float64


class _Replay(nn.Module):
    """Stands in for a decoder block: returns a fixed output without computing anything. It keeps the block's
    plain attributes (e.g. ``attention_type``, which some models read to pick a mask)."""

    def __init__(self, block: nn.Module, output: Any) -> None:
        super().__init__()
        for name, value in vars(block).items():
            if not name.startswith("_") and isinstance(value, str | int | float | bool):
                setattr(self, name, value)
        self.output = output

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.output


@contextlib.contextmanager
def _blocks_returning(blocks: nn.ModuleList, output: Any) -> Iterator[None]:
    originals = list(blocks)
    try:
        for i, block in enumerate(originals):
            blocks[i] = _Replay(block, output)
        yield
    finally:
        for i, block in enumerate(originals):
            blocks[i] = block


def as_block_output(template: Any, hidden: torch.Tensor) -> Any:
    """``hidden`` in the structure a block returns (a tensor, or a tuple led by it)."""
    return (hidden, *template[1:]) if isinstance(template, tuple) else hidden


class OutputHead:
    """Next-token log-probabilities from the last block's output, through the model's own final norm and head
    (every block replaced by a replay of that output), a slice of positions at a time: what follows the blocks
    acts on each position alone, so slicing is exact."""

    def __init__(self, model: nn.Module, blocks: nn.ModuleList, template: Any, batch: torch.Tensor) -> None:
        self.model, self.blocks, self.template, self.batch = model, blocks, template, batch
        vocab = model.get_output_embeddings().weight.shape[0]
        step = max(1, LOGIT_BUDGET // max(1, batch.shape[0] * vocab))
        self.slices = [slice(a, a + step) for a in range(0, batch.shape[1], step)]

    def log_probs(self, hidden: torch.Tensor, positions: slice, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        with _blocks_returning(self.blocks, as_block_output(self.template, hidden[:, positions])):
            logits = self.model(input_ids=self.batch[:, positions], use_cache=False).logits
        return F.log_softmax(logits.to(dtype), dim=-1)
