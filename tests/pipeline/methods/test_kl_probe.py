"""The KL probe's output sensitivity (curve_scale=kl), by noise and by one backward pass, against the exact trace of
the model's own Fisher."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.adapters import adapter_for, output_source, tiny_model_types
from pipeline.capture import output_head
from pipeline.methods.modegpt.probe import draw_seed, kl_sensitivity
from pipeline.methods.modegpt.probe_by_noise import RELATIVE_NOISE, kl_sensitivity_by_noise
from pipeline.tiny import random_model, tiny_config

MODEL_TYPES = tiny_model_types()
IDS = torch.randint(3, 120, (2, 6), generator=torch.Generator().manual_seed(0))


def _logits_with_output(model: torch.nn.Module, linear: torch.nn.Module, seq: torch.Tensor,
                        y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of ``seq`` with ``linear``'s output replaced by ``y`` (None: its own), and that output."""
    seen = {}

    def swap(m, args, out):
        seen["y"] = out if y is None else y
        return seen["y"]

    handle = linear.register_forward_hook(swap)
    try:
        return model(input_ids=seq[None]).logits[0], seen["y"]
    finally:
        handle.remove()


def _exact_fisher(model: torch.nn.Module, linear: torch.nn.Module) -> torch.Tensor:
    """[d, d]: Σ_t Σ_s J_tsᵀ (diag p_t − p_t p_tᵀ) J_ts / tokens, J_ts = ∂logits_t/∂(the linear's output at s), by
    autograd: the Fisher an output perturbation of the same covariance at every position sees (its trace: tr F)."""
    total = 0.0
    for seq in IDS:
        with torch.no_grad():
            logits, y0 = _logits_with_output(model, linear, seq, None)
        jac = torch.autograd.functional.jacobian(lambda y, s=seq: _logits_with_output(model, linear, s, y)[0], y0)
        length, vocab = jac.shape[:2]
        jac = jac.reshape(length, vocab, length, -1).double()
        p = F.softmax(logits.double(), dim=-1)
        for t in range(length):
            h = torch.diag(p[t]) - torch.outer(p[t], p[t])
            total = total + torch.einsum("vsa,vw,wsb->ab", jac[t], h, jac[t])
    return total / IDS.numel()


def _exact_fisher_trace(model: torch.nn.Module, linear: torch.nn.Module) -> float:
    return float(torch.trace(_exact_fisher(model, linear)))


def test_kl_probe_estimates_the_fisher_trace() -> None:
    model = random_model(tiny_config("llama"), seed=0)
    adapter = adapter_for(model)
    estimates = torch.stack([kl_sensitivity_by_noise(adapter, IDS, 2, torch.device("cpu"), sequences=2, seed=s)
                             for s in range(40)]).mean(0)
    for layer, site, linear in ((0, 0, adapter.layer(0).o_proj), (1, 1, adapter.layer(1).down_proj)):
        exact = _exact_fisher_trace(model, linear)
        ratio = float(estimates[layer, site]) / exact
        assert abs(ratio - 1) < 0.15, (layer, site, ratio)


def _naive_sensitivity(model: torch.nn.Module, adapter, ids: torch.Tensor, batch_size: int, seed: int) -> torch.Tensor:
    """The same estimate by whole-model forward passes, one sequence at a time: one clean, and one per module with
    its output perturbed by that sequence's own draws (seeded by sequence, layer and module) and σ."""
    totals = torch.zeros(adapter.num_layers, 2, dtype=torch.float64)
    for number, row in enumerate(ids):
        batch = row.unsqueeze(0)
        clean = F.log_softmax(model(input_ids=batch).logits.double(), dim=-1)
        for i, layer in enumerate(adapter.layers()):
            for site, linear in enumerate((layer.o_proj, layer.down_proj)):
                module, cols = output_source(linear)
                sigma = []
                generator = torch.Generator().manual_seed(draw_seed(seed, number, i, site))

                def perturb(m, args, out, cols=cols, sigma=sigma, generator=generator):
                    sigma.append(RELATIVE_NOISE * float(out[..., cols].float().square().mean().sqrt()))
                    out = out.clone()
                    part = out[..., cols]  # [1, T, n], or [T, n] where the block flattens its batch (OPT's MLP)
                    draws = torch.randn((part.numel() // part.shape[-1], part.shape[-1]), generator=generator)
                    out[..., cols] += draws.reshape(part.shape) * sigma[0]
                    return out

                handle = module.register_forward_hook(perturb)
                noisy = F.log_softmax(model(input_ids=batch).logits.double(), dim=-1)
                handle.remove()
                totals[i, site] += 2.0 * float((clean.exp() * (clean - noisy)).sum()) / sigma[0] ** 2
    return totals / ids.numel()


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_block_by_block_equals_whole_model_passes(model_type: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = random_model(tiny_config(model_type), seed=0).eval()
    adapter = adapter_for(model)
    ids = torch.randint(3, 120, (3, 7), generator=torch.Generator().manual_seed(1))
    # a logit budget of two positions' logits per batch row: the comparison runs in several position slices
    monkeypatch.setattr(output_head, "LOGIT_BUDGET", 2 * 2 * model.config.vocab_size)
    streamed = kl_sensitivity_by_noise(adapter, ids, 2, torch.device("cpu"), sequences=3, seed=3)
    with torch.no_grad():
        naive = _naive_sensitivity(model, adapter, ids, 2, seed=3)
    torch.testing.assert_close(streamed, naive, rtol=1e-4, atol=0)
    assert torch.all(streamed > 0)
    assert all(isinstance(b, type(adapter.decoder_layers()[0])) for b in adapter.decoder_layers())  # restored


def test_the_probe_reads_the_first_positions_of_the_first_sequences() -> None:
    adapter = adapter_for(random_model(tiny_config("llama"), seed=0).eval())
    ids = torch.randint(3, 120, (4, 9), generator=torch.Generator().manual_seed(2))
    cut = kl_sensitivity_by_noise(adapter, ids, 2, torch.device("cpu"), sequences=2, positions=5, seed=1)
    torch.testing.assert_close(cut, kl_sensitivity_by_noise(adapter, ids[:2, :5], 2, torch.device("cpu"), seed=1))
    assert not torch.allclose(cut, kl_sensitivity_by_noise(adapter, ids, 2, torch.device("cpu"), sequences=2, seed=1))


def test_batching_changes_nothing_but_the_seed_does() -> None:
    """calibration.batch_size only batches the probe: each sequence's draws and σ are its own."""
    model = random_model(tiny_config("llama"), seed=0).eval()
    adapter = adapter_for(model)
    ids = torch.randint(3, 120, (4, 9), generator=torch.Generator().manual_seed(2))
    cpu = torch.device("cpu")
    one = kl_sensitivity_by_noise(adapter, ids, 1, cpu, sequences=4)
    # float32 forwards of other batch shapes round differently (~1e-6 of a sensitivity); another seed moves ~10%
    assert torch.allclose(kl_sensitivity_by_noise(adapter, ids, 3, cpu, sequences=4), one, rtol=1e-5, atol=0)
    assert torch.allclose(kl_sensitivity_by_noise(adapter, ids, 4, cpu, sequences=4), one, rtol=1e-5, atol=0)
    other = kl_sensitivity_by_noise(adapter, ids, 4, cpu, sequences=4, seed=1)
    assert not torch.allclose(other, one, rtol=1e-2, atol=0)


# The probe the solve runs (PROBE_VERSION 4): the same tr F by one backward pass with labels the model samples.

@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_the_backward_probe_estimates_the_fisher_trace(model_type: str) -> None:
    model = random_model(tiny_config(model_type), seed=0)
    adapter = adapter_for(model)
    estimates = torch.stack([kl_sensitivity(adapter, IDS, 2, torch.device("cpu"), sequences=2, seed=s)
                             for s in range(40)]).mean(0)
    for layer, site, linear in ((0, 0, adapter.layer(0).o_proj), (1, 1, adapter.layer(1).down_proj)):
        ratio = float(estimates[layer, site]) / _exact_fisher_trace(model, linear)
        assert abs(ratio - 1) < 0.15, (layer, site, ratio)
    assert all(p.grad is None for p in model.parameters())  # gradients taken for the outputs only


def test_the_backward_probe_batching_changes_nothing_but_the_seed_does(monkeypatch: pytest.MonkeyPatch) -> None:
    model = random_model(tiny_config("llama"), seed=0).eval()
    adapter = adapter_for(model)
    ids = torch.randint(3, 120, (4, 9), generator=torch.Generator().manual_seed(2))
    cpu = torch.device("cpu")
    one = kl_sensitivity(adapter, ids, 1, cpu, sequences=4)
    # several position slices of the head: the labels are drawn per sequence and slice
    monkeypatch.setattr(output_head, "LOGIT_BUDGET", 3 * 4 * model.config.vocab_size)
    assert torch.allclose(kl_sensitivity(adapter, ids, 4, cpu, sequences=4), one, rtol=1e-4, atol=0)
    assert torch.allclose(kl_sensitivity(adapter, ids, 3, cpu, sequences=4), one, rtol=1e-4, atol=0)
    assert not torch.allclose(kl_sensitivity(adapter, ids, 4, cpu, sequences=4, seed=1), one, rtol=1e-2)
