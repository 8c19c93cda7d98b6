"""Per-token weights for loss-aware (empirical Fisher) correlations: ‖∂L/∂y_t‖² at each module's output.

A module's output error e_t changes the loss by about g_tᵀ e_t (g_t the loss gradient at the module's output);
the empirical Fisher squares that, and its isotropic part weights token t's squared error by ‖g_t‖². So the
Fisher-weighted correlation of a module's input is Σ_t ‖g_t‖² x_t x_tᵀ: tokens whose output the loss is
sensitive to count more. One backward pass per calibration batch, with the whole model on the device.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from pipeline.adapters import ModelAdapter, output_source
from pipeline.progress import progress

log = logging.getLogger(__name__)

SITES = ("attention", "mlp")  # index 0: the attention's output (o_proj), 1: the MLP's output (down_proj)


def token_gradient_weights(adapter: ModelAdapter, input_ids: torch.Tensor, batch_size: int,
                           device: torch.device) -> torch.Tensor:
    """[layers, 2, N, L] float32: ‖∂L/∂y_t‖² per token at every layer's attention and MLP outputs, L the summed
    next-token loss. Their scale is kept: the per-layer mean is how much the loss cares about that module's
    output at all (``compression.curve_scale=fisher``); the solver's weighted means divide it out. The model's
    parameters get no gradients and end where they were."""
    model = adapter.model
    layers = adapter.layers()
    n, length = input_ids.shape
    weights = torch.zeros(len(layers), len(SITES), n, length, dtype=torch.float32)
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    home = params[0].device
    caught: dict[tuple[int, int], torch.Tensor] = {}

    def site_hook(index: int, site: int, cols: slice) -> Any:
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            y = output[0] if isinstance(output, tuple) else output

            def keep(grad: torch.Tensor) -> None:
                caught[(index, site)] = grad[..., cols].detach().float().square().sum(-1).cpu()

            y.register_hook(keep)
        return hook

    handles = []
    for i, layer in enumerate(layers):
        for site, linear in enumerate((layer.o_proj, layer.down_proj)):
            module, cols = output_source(linear)
            handles.append(module.register_forward_hook(site_hook(i, site, cols)))
    # No parameter needs a gradient: the embeddings' output is the leaf the graph starts from.
    handles.append(model.get_input_embeddings().register_forward_hook(lambda m, a, out: out.requires_grad_(True)))
    try:
        for p in params:
            p.requires_grad_(False)
        model.to(device)
        with torch.enable_grad():
            for start in progress(range(0, n, batch_size), desc="fisher weights", unit="batch"):
                batch = input_ids[start : start + batch_size].to(device)
                # HF averages over the predicted tokens; summing keeps every batch on one scale.
                loss = model(input_ids=batch, labels=batch, use_cache=False).loss * (batch.shape[0] * (length - 1))
                loss.backward()
                for (i, site), g in caught.items():
                    weights[i, site, start : start + batch.shape[0]] = g.reshape(batch.shape)  # OPT: [B*L, d]
                caught.clear()
    finally:
        for h in handles:
            h.remove()
        model.to(home)
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
    peak = float((weights / weights.mean(dim=(2, 3), keepdim=True).clamp_min(1e-30)).max())
    log.info("Fisher token weights: %d tokens, the largest %.1fx its layer's mean", n * length, peak)
    return weights
