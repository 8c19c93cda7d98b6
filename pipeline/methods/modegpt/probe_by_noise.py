"""The KL probe by noise: forward passes only. The solve measures the same tr F by a backward pass (``probe.py``:
one backward pass in place of layers² noisy block passes); this estimator is its reference in the tests and in
``benchmarks/probe_check.py``, which compares the two (the quadratic regime, seeds, token counts).

For a small isotropic perturbation δ ~ N(0, σ²I) of a module's output, the KL divergence between the model's
next-token distributions before and after is ½ δᵀFδ to second order, F the Fisher information of the model's own
predictive distribution with respect to that output; so 2·E[KL]/σ² estimates tr F, the quantity the backward pass
of ``probe.py`` measures with labels drawn from the model's own predictions.

Block by block, like the capture: one block on the device at a time. Per batch of probe sequences the clean hidden
state and one *stream* per module perturbed so far go through each block; block l adds two streams (its attention
output and its MLP output perturbed, on the clean input). After the last block every stream's next-token
distribution is compared with the clean one, a slice of positions at a time, so the vocabulary-sized logits of one
slice are the largest tensor. Cost: about layers² block passes over the probe (the first 512 positions of the first
8 sequences); memory: 2·layers + 1 hidden states of one batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from pipeline.adapters import ModelAdapter, output_source
from pipeline.capture.output_head import OutputHead
from pipeline.solve_identity import PROBE_POSITIONS, PROBE_SEED

from .probe import draw_seed, run_probe

log = logging.getLogger(__name__)

# The probe's settings live with the solve's identity (pipeline.solve_identity). This estimator runs about layers²
# block passes over its tokens (a capture runs layers passes over the calibration's): with 8 × 512 probe tokens it
# cost SmolLM2's default 7.5 captures, which is why the solve uses the backward-pass estimate instead.
# σ as a fraction of the module output's RMS: small enough for the quadratic regime (benchmarks/probe_check.py)
RELATIVE_NOISE, SEQUENCES, POSITIONS = 0.02, 8, PROBE_POSITIONS


@dataclass
class _Stream:
    layer: int
    site: int  # 0: attention output (o_proj), 1: MLP output (down_proj)
    sigma: torch.Tensor  # [batch]: each sequence's own σ
    hidden: torch.Tensor


def _perturbing(linear: Any, relative_noise: float, seeds: list[int], sigma: list[torch.Tensor]) -> Any:
    """A forward hook adding N(0, σ_b²) noise to sequence b of ``linear``'s output, σ_b = relative_noise × that
    sequence's RMS (appended to ``sigma`` as a [batch] tensor). Sequence b's draws come from a CPU generator seeded
    with ``seeds[b]``, so every device and every batching sees the same draws."""
    _, cols = output_source(linear)

    def perturb(m: torch.nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
        part = out[..., cols]
        # [sequence, position, channel] whether the block keeps a batch axis or flattens it (OPT's MLP)
        rows = part.reshape(len(seeds), -1, part.shape[-1])
        sigma.append(relative_noise * rows.float().square().mean(dim=(1, 2)).sqrt().cpu())
        draws = torch.stack([torch.randn(rows.shape[1:], generator=torch.Generator().manual_seed(s),
                                         dtype=torch.float32) for s in seeds])
        noise = (draws * sigma[-1].view(-1, 1, 1)).reshape(part.shape).to(out.device)
        out = out.clone()
        out[..., cols] += noise.to(out.dtype)
        return out

    return perturb


def _probe_batch(adapter: ModelAdapter, batch: torch.Tensor, first: int, device: torch.device, relative_noise: float,
                 seed: int, totals: torch.Tensor) -> None:
    """Add one batch's 2·Σ_t KL / σ² per module to ``totals``; ``first``: the batch's first sequence index."""
    model, blocks, layers = adapter.model, adapter.decoder_layers(), adapter.layers()
    clean, kwargs = adapter.block_inputs(batch)
    streams: list[_Stream] = []
    template: Any = None
    for index, block in enumerate(blocks):
        home = next(block.parameters()).device
        block.to(device)
        for stream in streams:
            stream.hidden = adapter.run_block(block, stream.hidden, kwargs)
        for site, linear in enumerate((layers[index].o_proj, layers[index].down_proj)):
            sigma: list[torch.Tensor] = []
            seeds = [draw_seed(seed, first + b, index, site) for b in range(batch.shape[0])]
            handle = output_source(linear)[0].register_forward_hook(
                _perturbing(linear, relative_noise, seeds, sigma))
            try:
                hidden = adapter.run_block(block, clean, kwargs)
            finally:
                handle.remove()
            streams.append(_Stream(index, site, sigma[0], hidden))
        template = block(clean, **kwargs)
        clean = template[0] if isinstance(template, tuple) else template
        block.to(home)
    head = OutputHead(model, blocks, template, batch)
    for positions in head.slices:
        reference = head.log_probs(clean, positions)
        probabilities = reference.exp()
        for stream in streams:
            kl = (probabilities * (reference - head.log_probs(stream.hidden, positions))).sum(dim=(1, 2)).cpu()
            totals[stream.layer, stream.site] += (2.0 * kl / stream.sigma.double().square().clamp_min(1e-300)).sum()


@torch.no_grad()
def kl_sensitivity_by_noise(adapter: ModelAdapter, input_ids: torch.Tensor, batch_size: int, device: torch.device,
                            sequences: int = SEQUENCES, positions: int = POSITIONS,
                            relative_noise: float = RELATIVE_NOISE, seed: int = PROBE_SEED) -> torch.Tensor:
    """[layers, 2] float64: 2·Σ_t KL(p_t ‖ p_t^δ) / (σ² · tokens) at every layer's attention output (o_proj, column
    0) and MLP output (down_proj, column 1), over the first ``positions`` tokens of the first ``sequences``
    calibration sequences. Blocks go to ``device`` one at a time; the model ends where it was."""
    def add(batch: torch.Tensor, first: int, totals: torch.Tensor) -> None:
        _probe_batch(adapter, batch, first, device, relative_noise, seed, totals)

    return run_probe(adapter, input_ids[:sequences, :positions], batch_size, device, "KL probe by noise", add)
