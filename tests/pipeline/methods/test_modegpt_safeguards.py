"""Numerically hostile statistics: the solve stays finite and its log names the safeguards that fired."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
import torch

from pipeline.adapters import adapter_for
from pipeline.methods.modegpt import DenseLayer, ModegptSettings, solve_modegpt_layer
from pipeline.modegpt import F64, nystrom_mlp, vo_svd
from pipeline.planning import plan_layer
from pipeline.tiny import random_model, tiny_config

Activations = tuple[torch.Tensor, torch.Tensor]  # attention input X [N, d], MLP activations H [N, D]


def _dead_units(x: torch.Tensor, h: torch.Tensor) -> Activations:
    h = h.clone()
    h[:, :12] = 0.0
    return x, h


def _duplicated_channels(x: torch.Tensor, h: torch.Tensor) -> Activations:
    # Every channel twice: any selection of more than half of them keeps a duplicated pair.
    return torch.cat([x[:, ::2], x[:, ::2]], dim=1), torch.cat([h[:, ::2], h[:, ::2]], dim=1)


def _massive(x: torch.Tensor, h: torch.Tensor) -> Activations:
    x, h = x.clone(), h.clone()
    x[:, :2] *= 1e4
    h[:, :3] *= 1e4
    return x, h


HOSTILE: dict[str, tuple[int, Callable[[torch.Tensor, torch.Tensor], Activations], list[str]]] = {
    "dead-mlp-units": (400, _dead_units, ["layer 1: ", "12 dead MLP units"]),
    "duplicated-channels": (400, _duplicated_channels, ["C_JJ ridge", "near-singular pivots",
                                                        "eigenvalues raised to eig_floor"]),
    "fewer-tokens-than-hidden-size": (40, lambda x, h: (x, h), [
        "40 calibration tokens < hidden size 64 and MLP width 96", "C_JJ ridge", "eigenvalues raised to eig_floor"]),
    "fewer-tokens-than-mlp-width": (80, lambda x, h: (x, h), ["80 calibration tokens < MLP width 96"]),
    "massive-activations": (400, _massive, ["2 massive-activation attention-input channels",
                                            "3 massive-activation MLP units", "eigenvalues raised to eig_floor"]),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_statistics_give_finite_factors_and_name_the_safeguards(case: str, caplog) -> None:
    tokens, make, phrases = HOSTILE[case]
    adapter = adapter_for(random_model(tiny_config("llama")), "llama")
    shape, heads = adapter.block_shape(), adapter.head_layout()
    g = torch.Generator().manual_seed(0)
    x, h = make(torch.randn(tokens, shape.hidden_size, generator=g, dtype=F64),
                torch.randn(tokens, shape.intermediate_size, generator=g, dtype=F64))
    stats = {
        "mlp_gram": h.T @ h, "attn_gram": x.T @ x,
        "q_energy": torch.rand(heads.num_heads, heads.head_dim, generator=g, dtype=F64),
        "k_energy": torch.rand(heads.num_kv_heads, heads.head_dim, generator=g, dtype=F64),
        "tokens": torch.tensor(float(tokens), dtype=F64),
    }
    dense = DenseLayer.from_layer(adapter.layer(1), heads, torch.device("cpu"))
    with caplog.at_level(logging.INFO, logger="pipeline.methods.modegpt.layer"):
        solution, errors = solve_modegpt_layer(stats, dense, plan_layer(0.3, shape, round_to=1), heads,
                                               ModegptSettings(mlp_refit="paper"), layer=1)
    for name, tensor in solution.to_tensors().items():
        assert torch.isfinite(tensor.double()).all(), name
    assert all(torch.isfinite(torch.tensor(v)) for v in errors.values()), errors
    lines = [r.getMessage() for r in caplog.records if r.name == "pipeline.methods.modegpt.layer"]
    assert len(lines) == 1, lines  # one line per layer
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])


def test_a_well_conditioned_layer_logs_nothing(caplog) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2000, 32, generator=g, dtype=F64)
    corr = x.T @ x / 2000
    solution = nystrom_mlp(corr, torch.randn(32, 8, generator=g, dtype=F64), 20)
    assert not (solution.leverage_eigh or solution.ridge_pivots or solution.pseudo_inverse)
    vo = vo_svd(corr, torch.randn(2, 32, 4, generator=g, dtype=F64), torch.randn(4, 4, 32, generator=g, dtype=F64), 2)
    assert vo.floored == 0


def test_the_mlp_safeguards_report_when_they_fire() -> None:
    g = torch.Generator().manual_seed(2)
    h = torch.randn(8, 16, generator=g, dtype=F64)
    singular = h.T @ h / 8  # rank 8 of 16
    w_down = torch.randn(16, 4, generator=g, dtype=F64)
    ridged = nystrom_mlp(singular, w_down, 12)
    assert ridged.ridge > 0 and ridged.ridge_pivots >= 4 and not ridged.pseudo_inverse
    bare = nystrom_mlp(singular, w_down, 12, nystrom_ridge=0.0)
    assert bare.pseudo_inverse and torch.isfinite(bare.w_down).all()
    indefinite = singular - 5.0 * torch.eye(16, dtype=F64)  # C + λI not positive definite: eigh fallback
    fallback = nystrom_mlp(indefinite, w_down, 12)
    assert fallback.leverage_eigh and torch.isfinite(fallback.w_down).all()
