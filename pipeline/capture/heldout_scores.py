"""How far each candidate compression moves the model's next-token distribution on held-out text (allocation=validated).

Every candidate is applied in memory, layer by layer like the capture: the dense hidden state and one stream per
candidate go through each block in turn; for a candidate the block is rewritten with that candidate's solved layer
(``apply``), run, and restored, so one copy of the model serves them all and only one block is on the device.
After the last block each stream's next-token distribution is compared with the dense one, a slice of positions at a
time, as mean KL(p_dense ‖ p_candidate) per token, and scored on the text's own next tokens (cross-entropy, what
perplexity measures). The dense stream is computed once for every candidate.
"""

from __future__ import annotations

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


def _next_token_nll(log_probs: torch.Tensor, batch: torch.Tensor, positions: slice) -> float:
    """Summed −log p(next token) over the slice's positions that have a next token in the sequence."""
    start, stop = positions.start, min(positions.stop, batch.shape[1] - 1)
    if stop <= start:
        return 0.0
    predicted = log_probs[:, :stop - start].flatten(0, 1).double()
    return float(F.nll_loss(predicted, batch[:, start + 1:stop + 1].flatten(), reduction="sum"))


@torch.no_grad()
def heldout_scores(adapter: ModelAdapter, input_ids: torch.Tensor, batch_size: int, device: torch.device,
               variants: LayerVariants, apply: Apply) -> HeldoutScores:
    """Mean KL(dense ‖ candidate) per token and next-token cross-entropy over ``input_ids`` [N, L] for every
    candidate ``variants`` names
    (``variants(i)`` gives candidate → layer i's solution, asked once per layer, in order). Hidden states of every
    stream stay on the host between blocks; the model ends where it was."""
    blocks = adapter.decoder_layers()
    batches = [b.to(device) for b in input_ids.split(batch_size)]
    home = next(adapter.model.get_input_embeddings().parameters()).device
    adapter.move_non_layer_modules(device)
    try:
        entries = [adapter.block_inputs(b) for b in batches]
        dense = [hidden.cpu() for hidden, _ in entries]
        kwargs = [kw for _, kw in entries]
        streams: dict[str, list[torch.Tensor]] = {}
        templates: list[Any] = []
        for index in progress(range(len(blocks)), desc="held-out validation", unit="layer"):
            block = blocks[index]
            block_home = next(block.parameters()).device
            block.to(device)
            solved = variants(index)
            if not streams:
                streams = {name: list(dense) for name in solved}
            if set(solved) != set(streams):
                raise ValueError(f"layer {index} has candidates {sorted(solved)}, expected {sorted(streams)}")
            dense_state = {k: v.clone() for k, v in block.state_dict().items()}
            for name, solution in solved.items():
                apply(adapter.layer(index), solution)
                streams[name] = [adapter.run_block(block, h.to(device), kw).cpu()
                                 for h, kw in zip(streams[name], kwargs, strict=True)]
                block.load_state_dict(dense_state)
            outputs = [block(h.to(device), **kw) for h, kw in zip(dense, kwargs, strict=True)]
            templates = outputs
            dense = [(out[0] if isinstance(out, tuple) else out).cpu() for out in outputs]
            block.to(block_home)
        totals, nll = dict.fromkeys(streams, 0.0), dict.fromkeys(streams, 0.0)
        dense_nll = 0.0
        for number, batch in enumerate(batches):
            head = OutputHead(adapter.model, blocks, templates[number], batch)
            for positions in head.slices:
                # FP32 distributions (candidates' KLs differ in the second digit, far above FP32's rounding), each
                # position's KL summed in FP64: the head's step took 18.5 s instead of 29 s on SmolLM2 (RESULTS)
                reference = head.log_probs(dense[number].to(device), positions, torch.float32)
                probabilities = reference.exp()
                dense_nll += _next_token_nll(reference, batch, positions)
                for name, hidden in streams.items():
                    candidate = head.log_probs(hidden[number].to(device), positions, torch.float32)
                    per_position = (probabilities * (reference - candidate)).sum(-1, dtype=torch.float64)
                    totals[name] += float(per_position.sum())
                    nll[name] += _next_token_nll(candidate, batch, positions)
    finally:
        adapter.move_non_layer_modules(home)
    tokens, predicted = input_ids.numel(), input_ids.shape[0] * (input_ids.shape[1] - 1)
    return HeldoutScores(kl={name: total / tokens for name, total in totals.items()},
                         nll={name: total / predicted for name, total in nll.items()}, dense_nll=dense_nll / predicted)
