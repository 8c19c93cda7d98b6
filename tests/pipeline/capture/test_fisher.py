"""Loss-aware (empirical Fisher) token weights and the weighted sums the capture adds with them."""

from __future__ import annotations

import pytest
import torch

from pipeline.adapters import adapter_for
from pipeline.capture import fisher_mixed
from pipeline.capture.fisher import token_gradient_weights
from pipeline.capture.runner import capture_layers
from pipeline.tiny import random_model, tiny_config

IDS = torch.randint(3, 120, (5, 16), generator=torch.Generator().manual_seed(0))


def _model(family: str = "llama") -> torch.nn.Module:
    return random_model(tiny_config(family), seed=0)


def _probe_gradients(model: torch.nn.Module, ids: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """‖∂L/∂y‖² per token at layer ``layer``'s o_proj and down_proj outputs, by adding a zero probe δ to each
    output and differentiating the summed next-token loss with respect to δ (no hooks on gradients)."""
    adapter = adapter_for(model)
    lay = adapter.layer(layer)
    probes = {}

    def add_probe(name: str):
        def hook(module, args, out):
            probes[name] = torch.zeros_like(out, requires_grad=True)
            return out + probes[name]
        return hook

    handles = [lay.o_proj.register_forward_hook(add_probe("o")), lay.down_proj.register_forward_hook(add_probe("d"))]
    try:
        out = []
        for batch in ids.split(2):
            loss = model(input_ids=batch, labels=batch).loss * (batch.shape[0] * (batch.shape[1] - 1))
            g_o, g_d = torch.autograd.grad(loss, [probes["o"], probes["d"]])
            out.append((g_o.square().sum(-1).reshape(batch.shape), g_d.square().sum(-1).reshape(batch.shape)))
    finally:
        for h in handles:
            h.remove()
    return torch.cat([o for o, _ in out]), torch.cat([d for _, d in out])


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_token_weights_are_the_squared_loss_gradients(family: str) -> None:
    model = _model(family)
    before = {n: p.clone() for n, p in model.named_parameters()}
    weights = token_gradient_weights(adapter_for(model), IDS, batch_size=2, device=torch.device("cpu"))
    assert weights.shape == (adapter_for(model).num_layers, 2, *IDS.shape)
    for layer in range(weights.shape[0]):
        g_o, g_d = _probe_gradients(model, IDS, layer)
        for got, want in ((weights[layer, 0], g_o), (weights[layer, 1], g_d)):
            torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-6 * float(want.abs().max()))
    # The last position predicts nothing, so no loss reaches it; nothing else is zero.
    assert torch.all(weights[..., -1] == 0) and torch.all(weights[..., :-1] > 0)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) and p.grad is None


def _capture(model: torch.nn.Module, weights: torch.Tensor | None) -> dict[int, dict[str, torch.Tensor]]:
    out: dict[int, dict[str, torch.Tensor]] = {}
    capture_layers(adapter_for(model), IDS, lambda i, s, _: out.__setitem__(i, s), torch.device("cpu"), 2,
                   token_weights=weights)
    return out


def test_weighted_sums_weight_each_token() -> None:
    model = _model()
    layers = adapter_for(model).num_layers
    plain = _capture(model, None)
    ones = _capture(model, torch.ones(layers, 2, *IDS.shape))
    names = ("attn_gram", "mlp_gram", "q_energy", "k_energy")
    for i in range(layers):
        assert not any(n.startswith("fisher_") for n in plain[i])
        for n in names:
            torch.testing.assert_close(ones[i][f"fisher_{n}"], plain[i][n])
        for w in ("fisher_attn_weight", "fisher_mlp_weight"):
            torch.testing.assert_close(ones[i][w], plain[i]["tokens"])
    # Weight 3 on the first two sequences and 0 on the rest: three times the sums of a capture of those two
    # (the first sequences' inputs do not depend on the others: one batch of 2).
    w = torch.zeros(layers, 2, *IDS.shape)
    w[:, :, :2] = 3.0
    weighted = _capture(model, w)
    first = {}
    capture_layers(adapter_for(model), IDS[:2], lambda i, s, _: first.__setitem__(i, s), torch.device("cpu"), 2)
    for i in range(layers):
        for n in names:
            torch.testing.assert_close(weighted[i][f"fisher_{n}"], 3.0 * first[i][n])
            torch.testing.assert_close(weighted[i][n], plain[i][n])  # the plain sums are untouched


def test_fisher_mix_interpolates_and_needs_the_weighted_sums() -> None:
    sums = {"attn_gram": torch.ones(2, 2), "mlp_gram": torch.ones(3, 3), "q_energy": torch.ones(2),
            "k_energy": torch.ones(2), "tokens": torch.tensor(4.0)}
    assert fisher_mixed(sums, 0.0) is sums
    with pytest.raises(ValueError, match="calibration.fisher=true"):
        fisher_mixed(sums, 0.5)
    # Weights summing to 2 per token: the weighted sums are divided by that mean before they are mixed.
    full = sums | {f"fisher_{n}": 6 * sums[n] for n in ("attn_gram", "mlp_gram", "q_energy", "k_energy")}
    full |= {"fisher_attn_weight": torch.tensor(8.0), "fisher_mlp_weight": torch.tensor(8.0)}
    mixed = fisher_mixed(full, 0.25)
    torch.testing.assert_close(mixed["mlp_gram"], 1.5 * torch.ones(3, 3))
    assert mixed["tokens"] is sums["tokens"]
