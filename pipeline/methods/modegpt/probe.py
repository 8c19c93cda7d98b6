"""The KL probe (curve_scale=kl): how much the model's next-token distribution moves, per unit of noise, when one
module's output is perturbed; by one backward pass, for every module at once.

What the probe measures is the quadratic coefficient of the KL: for an isotropic perturbation δ of a module's output
of variance σ² at every position, Σ_t KL(p_t ‖ p_t^δ) ≈ ½σ² tr F, F = Σ_t J_tᵀ F_t J_t the Gauss-Newton matrix of the
KL at that output: F_t is the Fisher information of the model's own predictive distribution p_t (not of any data's
labels), pulled back through the layers above (``probe_by_noise.py`` estimates 2·KL/σ² with one noisy forward pass per
module). The same trace is an expectation over labels the model samples itself: with y_t ~ p_t drawn independently
at every position and g = ∂ Σ_t log p_t(y_t) / ∂(the output), E‖g‖² = tr F (cross terms vanish because
E_y[∂ log p_t(y)] = 0). One backward pass gives g at every module of every layer, so the probe runs one forward and
one backward pass over its tokens instead of layers² block passes, and it is the quadratic limit exactly, with no
noise scale to choose.

Layer by layer, like the capture: the forward pass keeps each block's input on the host, then the blocks are
recomputed from the top down, one on the device at a time, each passing its input's gradient to the block below.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pipeline import solve_identity
from pipeline.adapters import ModelAdapter, output_source
from pipeline.artifacts import ArtifactPaths, atomic_path, fingerprint
from pipeline.capture.output_head import OutputHead
from pipeline.methods.base import SolveInputs
from pipeline.progress import progress
from pipeline.readers import load_tokens
from pipeline.solve_identity import PROBE_POSITIONS, PROBE_SEED, PROBE_SEQUENCES, probe_key

log = logging.getLogger(__name__)


def probe_sensitivity(inputs: SolveInputs, compression: Any) -> torch.Tensor:
    """The KL probe's [layers, 2] sensitivities, in a file of their own, keyed by ``probe_key``: the probe depends
    on the calibration tokens and the model only, so every solver setting reuses one probe, the dearest part of the
    curves."""
    cfg, adapter = inputs.cfg, inputs.adapter
    key = {"store": inputs.store_fingerprint, **(probe_key(compression) or {})}
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
    sensitivity = kl_sensitivity(adapter, load_tokens(cfg)[0], cfg.calibration.batch_size, inputs.device,
                                 sequences=solve_identity.PROBE_SEQUENCES)
    with atomic_path(path) as tmp:
        save_file({"sensitivity": sensitivity.contiguous()}, str(tmp), metadata={"key": made_for})
    return sensitivity


def draw_seed(seed: int, sequence: int, layer: int, site: int) -> int:
    """One generator seed per (probe seed, calibration sequence, layer, module): the draws a sequence gets do not
    depend on which batch it is in."""
    return ((seed * 1_000_003 + sequence) * 100_003 + layer) * 2 + site


def _uniforms(batch: torch.Tensor, seed: int, first: int) -> torch.Tensor:
    """[batch, positions] uniforms from a CPU generator per sequence (``first``: the batch's first sequence), so
    neither batching, position slicing nor the device changes a sequence's labels."""
    return torch.stack([torch.rand(batch.shape[1], generator=torch.Generator().manual_seed(
        draw_seed(seed, first + b, -1, 0)), dtype=torch.float64) for b in range(batch.shape[0])])


def _sampled_labels(log_probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Labels drawn from each position's own distribution by inverting its CDF at the given uniforms."""
    cdf = log_probs.detach().exp().cumsum(dim=-1)
    draws = uniforms.to(cdf.device).unsqueeze(-1) * cdf[..., -1:]
    return torch.searchsorted(cdf, draws).squeeze(-1).clamp_max(cdf.shape[-1] - 1)


def _output_gradient(head: OutputHead, hidden: torch.Tensor, seed: int, first: int) -> torch.Tensor:
    """∂ Σ_t log p_t(y_t) / ∂(the last block's output), labels sampled from the model, a slice of positions at a
    time (what follows the blocks acts on each position alone)."""
    gradient = torch.zeros_like(hidden)
    leaf = hidden.detach().requires_grad_(True)
    uniforms = _uniforms(head.batch, seed, first)
    for positions in head.slices:
        with torch.enable_grad():
            log_probs = head.log_probs(leaf, positions)
            labels = _sampled_labels(log_probs, uniforms[:, positions])
            chosen = log_probs.gather(-1, labels.unsqueeze(-1)).sum()
            gradient += torch.autograd.grad(chosen, leaf)[0]
    return gradient


def _gradient_batch(adapter: ModelAdapter, batch: torch.Tensor, first: int, device: torch.device, seed: int,
                  totals: torch.Tensor) -> None:
    """Add one batch's Σ ‖g‖² per module to ``totals`` ([layers, 2]: attention output, MLP output)."""
    blocks, layers = adapter.decoder_layers(), adapter.layers()
    with torch.no_grad():
        hidden, kwargs = adapter.block_inputs(batch)
        inputs, template = [], None
        for block in blocks:
            home = next(block.parameters()).device
            block.to(device)
            inputs.append(hidden.to("cpu", copy=True))  # the host holds every block's input, not the device
            template = block(hidden, **kwargs)
            hidden = template[0] if isinstance(template, tuple) else template
            block.to(home)
    gradient = _output_gradient(OutputHead(adapter.model, blocks, template, batch), hidden, seed, first)
    for index in reversed(range(len(blocks))):
        block = blocks[index]
        home = next(block.parameters()).device
        block.to(device)
        linears = (layers[index].o_proj, layers[index].down_proj)
        outputs: list[torch.Tensor] = []
        handles = [output_source(linear)[0].register_forward_hook(lambda m, a, out, seen=outputs: seen.append(out))
                   for linear in linears]
        try:
            block_input = inputs[index].to(device).requires_grad_(True)
            with torch.enable_grad():
                out = adapter.run_block(block, block_input, kwargs)
                grads = torch.autograd.grad(out, [block_input, *outputs], grad_outputs=gradient)
        finally:
            for handle in handles:
                handle.remove()
        for site, (linear, g) in enumerate(zip(linears, grads[1:], strict=True)):
            totals[index, site] += float(g[..., output_source(linear)[1]].double().square().sum())
        gradient = grads[0].detach()
        block.to(home)


def kl_sensitivity(adapter: ModelAdapter, input_ids: torch.Tensor, batch_size: int, device: torch.device,
                   sequences: int = PROBE_SEQUENCES, positions: int = PROBE_POSITIONS, seed: int = PROBE_SEED
                   ) -> torch.Tensor:
    """[layers, 2] float64: tr F per token at every layer's attention output (o_proj, column 0) and MLP output
    (down_proj, column 1), over the first ``positions`` tokens of the first ``sequences`` calibration sequences:
    the quantity ``probe_by_noise.kl_sensitivity_by_noise`` estimates by noise, in the same units."""
    def add(batch: torch.Tensor, first: int, totals: torch.Tensor) -> None:
        _gradient_batch(adapter, batch, first, device, seed, totals)

    return run_probe(adapter, input_ids[:sequences, :positions], batch_size, device, "KL probe", add)


def run_probe(adapter: ModelAdapter, probe: torch.Tensor, batch_size: int, device: torch.device, name: str,
              add_batch: Callable[[torch.Tensor, int, torch.Tensor], None]) -> torch.Tensor:
    """The drive both probe estimators share: the non-block modules on ``device`` (blocks go one at a time), each
    batch's per-module sums added by ``add_batch(batch, first sequence, totals)``, then per token ([layers, 2])."""
    totals = torch.zeros(adapter.num_layers, 2, dtype=torch.float64)
    home = next(adapter.model.get_input_embeddings().parameters()).device
    adapter.move_non_layer_modules(device)
    try:
        batches = list(enumerate(probe.split(batch_size)))
        for number, batch in progress(batches, desc=name, unit="batch"):
            add_batch(batch.to(device), number * batch_size, totals)
    finally:
        adapter.move_non_layer_modules(home)
    tokens = probe.numel()
    log.info("%s from %d tokens: attention %.3g..%.3g, MLP %.3g..%.3g", name, tokens,
             float(totals[:, 0].min() / tokens), float(totals[:, 0].max() / tokens),
             float(totals[:, 1].min() / tokens), float(totals[:, 1].max() / tokens))
    return totals / tokens
