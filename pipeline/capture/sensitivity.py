"""How much the model's output cares about each module's output, from forward passes only (curve_scale=kl).

For a small isotropic perturbation δ ~ N(0, σ²I) of a module's output, the KL divergence between the model's
next-token distributions before and after is ½ δᵀFδ to second order, F the Fisher information of the model's own
predictive distribution with respect to that output; so 2·E[KL]/σ² estimates tr F, the same quantity as the
empirical Fisher's E‖∂L/∂y‖² (``pipeline.capture.fisher``) but with the model's own predictions in place of the
labels and no backward pass. One clean and 2 × layers perturbed forward passes per batch, on a few sequences;
a pass perturbing layer l replays the clean outputs of the blocks below l instead of recomputing them (half the
cost on average).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from pipeline.adapters import ModelAdapter, output_source

log = logging.getLogger(__name__)

RELATIVE_NOISE = 0.02  # σ as a fraction of the module output's RMS: small enough for the quadratic regime
SEQUENCES = 8  # calibration sequences probed (the first ones): enough tokens for a stable mean


def _log_probs(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(model(input_ids=batch, use_cache=False).logits.float(), dim=-1)


def _perturbed_log_probs(model: torch.nn.Module, batch: torch.Tensor, linear: Any, relative_noise: float,
                         generator: torch.Generator) -> tuple[torch.Tensor, float]:
    """Log-probabilities with N(0, σ²) noise added to ``linear``'s output, σ = relative_noise × its RMS; and σ."""
    module, cols = output_source(linear)
    sigma: list[float] = []

    def perturb(m: torch.nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
        part = out[..., cols]
        sigma.append(relative_noise * float(part.float().square().mean().sqrt()))
        noise = torch.randn(part.shape, generator=generator, dtype=torch.float32) * sigma[0]
        out = out.clone()
        out[..., cols] += noise.to(out.device, out.dtype)
        return out

    handle = module.register_forward_hook(perturb)
    try:
        return _log_probs(model, batch), sigma[0]
    finally:
        handle.remove()


class _Replay(nn.Module):
    """Stands in for a block below the perturbed one: returns that block's clean output without computing it. It
    keeps the block's plain attributes (e.g. ``attention_type``, which some models read to pick a mask)."""

    def __init__(self, block: nn.Module, output: Any) -> None:
        super().__init__()
        for name, value in vars(block).items():
            if not name.startswith("_") and isinstance(value, str | int | float | bool):
                setattr(self, name, value)
        self.output = output

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.output


@contextlib.contextmanager
def _replaying(blocks: nn.ModuleList, outputs: list[Any], below: int) -> Iterator[None]:
    originals = [blocks[i] for i in range(below)]
    try:
        for i in range(below):
            blocks[i] = _Replay(originals[i], outputs[i])
        yield
    finally:
        for i, block in enumerate(originals):
            blocks[i] = block


def _clean_pass(model: nn.Module, blocks: nn.ModuleList, batch: torch.Tensor) -> tuple[torch.Tensor, list[Any]]:
    """Log-probabilities of the unperturbed model and every block's output, as the block returned it."""
    outputs: list[Any] = [None] * len(blocks)
    handles = [b.register_forward_hook(lambda m, a, out, i=i: outputs.__setitem__(i, out))
               for i, b in enumerate(blocks)]
    try:
        return _log_probs(model, batch), outputs
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def output_sensitivity(adapter: ModelAdapter, input_ids: torch.Tensor, batch_size: int, device: torch.device,
                       sequences: int = SEQUENCES, relative_noise: float = RELATIVE_NOISE, seed: int = 0,
                       replay_below: bool = True) -> torch.Tensor:
    """[layers, 2] float64: 2·Σ_t KL(p_t ‖ p_t^δ) / (σ² · tokens) at every layer's attention output (o_proj, column
    0) and MLP output (down_proj, column 1), over the first ``sequences`` calibration sequences. The model ends
    where it was."""
    model = adapter.model
    layers = adapter.layers()
    blocks = adapter.decoder_layers()
    home = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    totals = torch.zeros(len(layers), 2, dtype=torch.float64)
    probe = input_ids[:sequences]
    model.to(device)
    try:
        for batch in tqdm(probe.split(batch_size), desc="output sensitivity", unit="batch", disable=None):
            batch = batch.to(device)
            clean, block_outputs = _clean_pass(model, blocks, batch)
            for i, layer in enumerate(layers):
                for site, linear in enumerate((layer.o_proj, layer.down_proj)):
                    with _replaying(blocks, block_outputs, i if replay_below else 0):
                        noisy, sigma = _perturbed_log_probs(model, batch, linear, relative_noise, generator)
                    kl = (clean.exp() * (clean - noisy)).sum().double()
                    totals[i, site] += 2.0 * kl / max(sigma**2, 1e-300)
    finally:
        model.to(home)
    tokens = probe.numel()
    log.info("output sensitivity from %d tokens: attention %.3g..%.3g, MLP %.3g..%.3g", tokens,
             float(totals[:, 0].min() / tokens), float(totals[:, 0].max() / tokens),
             float(totals[:, 1].min() / tokens), float(totals[:, 1].max() / tokens))
    return totals / tokens
