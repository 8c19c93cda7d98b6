"""How far each candidate compression moves the model's next-token distribution on held-out text (allocation=validated).

Every candidate is applied in memory, layer by layer like the capture: the dense hidden state and one stream per
candidate go through each block in turn; for a candidate the block is rewritten with that candidate's solved layer
(``apply``), run, and restored, so one copy of the model serves them all and only one block is on the device.
After the last block each stream's next-token distribution is compared with the dense one, a slice of positions at a
time, as mean KL(p_dense ‖ p_candidate) per token, and scored on the text's own next tokens (cross-entropy, what
perplexity measures). The dense stream is computed once for every candidate. Sequential calibration walks the
blocks itself and scores its compressed model the same way, through :class:`HeldoutStreams`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from pipeline.adapters import LayerAdapter, ModelAdapter
from pipeline.capture.output_head import OutputHead
from pipeline.progress import progress

# layer index -> {candidate name: what ``apply`` writes into that layer's block}
LayerVariants = Callable[[int], dict[str, Any]]
Apply = Callable[[LayerAdapter, Any], None]


@dataclass(frozen=True)
class HeldoutScores:
    """Per candidate: mean KL(dense ‖ candidate) per token, and mean cross-entropy (nats) of the text's next token
    (every position but each sequence's last); ``dense_nll`` the dense model's."""

    kl: dict[str, float]
    nll: dict[str, float]
    dense_nll: float
    seconds: float = 0.0  # spent carrying the streams and scoring them


def _next_token_nll(log_probs: torch.Tensor, batch: torch.Tensor, positions: slice) -> float:
    """Summed −log p(next token) over the slice's positions that have a next token in the sequence."""
    start, stop = positions.start, min(positions.stop, batch.shape[1] - 1)
    if stop <= start:
        return 0.0
    predicted = log_probs[:, :stop - start].flatten(0, 1).double()
    return float(F.nll_loss(predicted, batch[:, start + 1:stop + 1].flatten(), reduction="sum"))


class HeldoutStreams:
    """The held-out text's hidden states advanced block by block: the dense model's stream and one per candidate.

    Whoever walks the blocks calls :meth:`advance` with each block on the device and dense, and a rewrite per
    candidate; :meth:`scores` compares the streams after the last block. The validation restores each block after
    every candidate; sequential calibration keeps its one rewrite (``keep_last``), so its compressed model is scored
    in the same pass that makes it, with no second copy of the model. Streams stay on the host between blocks.
    """

    def __init__(self, adapter: ModelAdapter, input_ids: torch.Tensor, batch_size: int, device: torch.device) -> None:
        """Needs the embeddings on ``device`` (``adapter.move_non_layer_modules``)."""
        self.adapter, self.input_ids, self.device = adapter, input_ids, device
        self.batches = [b.to(device) for b in input_ids.split(batch_size)]
        entries = [adapter.block_inputs(b) for b in self.batches]
        self.dense = [hidden.cpu() for hidden, _ in entries]
        self.kwargs = [kw for _, kw in entries]
        self.streams: dict[str, list[torch.Tensor]] = {}
        self.templates: list[Any] = []
        self.seconds = 0.0  # spent in advance() and scores(), the rewrites included

    def _run(self, block: torch.nn.Module, hidden: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.adapter.run_block(block, h.to(self.device), kw).cpu()
                for h, kw in zip(hidden, self.kwargs, strict=True)]

    @torch.no_grad()
    def advance(self, block: torch.nn.Module, rewrites: dict[str, Callable[[], None]], *,
                keep_last: bool = False) -> None:
        """Run the dense stream through ``block``, then each candidate's stream through the block as
        ``rewrites[name]()`` leaves it. The block is restored to dense after each candidate, except after the last
        when ``keep_last``."""
        start = time.perf_counter()
        if not self.streams:
            self.streams = {name: list(self.dense) for name in rewrites}
        if set(rewrites) != set(self.streams):
            raise ValueError(f"candidates {sorted(rewrites)}, expected {sorted(self.streams)}")
        outputs = [block(h.to(self.device), **kw) for h, kw in zip(self.dense, self.kwargs, strict=True)]
        self.templates = outputs
        self.dense = [(out[0] if isinstance(out, tuple) else out).cpu() for out in outputs]
        names = list(rewrites)
        restore = len(names) > 1 or not keep_last
        dense_state = {k: v.clone() for k, v in block.state_dict().items()} if restore else {}
        for number, name in enumerate(names):
            rewrites[name]()
            self.streams[name] = self._run(block, self.streams[name])
            if not (keep_last and number == len(names) - 1):
                block.load_state_dict(dense_state)
        self.seconds += time.perf_counter() - start

    @torch.no_grad()
    def scores(self) -> HeldoutScores:
        """After the last block: every stream's next-token distribution against the dense one."""
        start = time.perf_counter()
        model, blocks = self.adapter.model, self.adapter.decoder_layers()
        totals, nll = dict.fromkeys(self.streams, 0.0), dict.fromkeys(self.streams, 0.0)
        dense_nll = 0.0
        for number, batch in enumerate(self.batches):
            head = OutputHead(model, blocks, self.templates[number], batch)
            for positions in head.slices:
                # FP32 distributions (candidates' KLs differ in the second digit, far above FP32's rounding), each
                # position's KL summed in FP64: the head's step took 18.5 s instead of 29 s on SmolLM2 (RESULTS)
                reference = head.log_probs(self.dense[number].to(self.device), positions, torch.float32)
                probabilities = reference.exp()
                dense_nll += _next_token_nll(reference, batch, positions)
                for name, hidden in self.streams.items():
                    candidate = head.log_probs(hidden[number].to(self.device), positions, torch.float32)
                    per_position = (probabilities * (reference - candidate)).sum(-1, dtype=torch.float64)
                    totals[name] += float(per_position.sum())
                    nll[name] += _next_token_nll(candidate, batch, positions)
        tokens, predicted = self.input_ids.numel(), self.input_ids.shape[0] * (self.input_ids.shape[1] - 1)
        self.seconds += time.perf_counter() - start
        return HeldoutScores(kl={name: total / tokens for name, total in totals.items()},
                             nll={name: total / predicted for name, total in nll.items()},
                             dense_nll=dense_nll / predicted, seconds=self.seconds)


def heldout_scores(adapter: ModelAdapter, input_ids: torch.Tensor, batch_size: int, device: torch.device,
                   variants: LayerVariants, apply: Apply) -> HeldoutScores:
    """Mean KL(dense ‖ candidate) per token and next-token cross-entropy over ``input_ids`` [N, L] for every
    candidate ``variants`` names (``variants(i)`` gives candidate → layer i's solution, asked once per layer, in
    order). The model ends where it was."""
    blocks = adapter.decoder_layers()
    home = next(adapter.model.get_input_embeddings().parameters()).device
    adapter.move_non_layer_modules(device)
    try:
        streams = HeldoutStreams(adapter, input_ids, batch_size, device)
        for index in progress(range(len(blocks)), desc="held-out validation", unit="layer"):
            block = blocks[index]
            block_home = next(block.parameters()).device
            block.to(device)
            layer = adapter.layer(index)
            streams.advance(block, {name: functools.partial(apply, layer, solution)
                                    for name, solution in variants(index).items()})
            block.to(block_home)
        return streams.scores()
    finally:
        adapter.move_non_layer_modules(home)
