"""Sparsity allocation: exact mean, caps, limits in the temperature, monotonicity, rounding of widths."""

from __future__ import annotations

import pytest
import torch

from pipeline.modegpt import bi_sparsity, kept_dim, svd_rank_for_sparsity, uniform_sparsity


def _scores(n: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, generator=g, dtype=torch.float64) * 0.5


@pytest.mark.parametrize("target", [0.1, 0.25, 0.4, 0.7])
@pytest.mark.parametrize("temperature", [0.02, 0.1, 1.0])
def test_mean_equals_target_and_cap_holds(target: float, temperature: float) -> None:
    phi = bi_sparsity(_scores(), target, temperature, max_sparsity=0.85)
    assert phi.dtype == torch.float64
    assert abs(float(phi.mean()) - target) < 1e-12
    assert float(phi.max()) <= 0.85 + 1e-15
    assert float(phi.min()) >= 0.0


def test_cap_forces_redistribution() -> None:
    # One layer barely changes the stream: the raw softmax would give it φ ≈ L·φ_avg ≫ 1.
    s = torch.tensor([0.0, 1.0, 1.0, 1.2, 1.5, 2.0], dtype=torch.float64)
    target, cap = 0.5, 0.8
    raw = len(s) * target * torch.softmax(-s / 0.1, dim=0)
    assert float(raw[0]) > cap  # the construction really needs the cap
    phi = bi_sparsity(s, target, 0.1, cap)
    assert float(phi[0]) == pytest.approx(cap, abs=1e-15)
    assert float(phi.max()) <= cap + 1e-15
    assert abs(float(phi.mean()) - target) < 1e-12
    # Uncapped layers keep the softmax proportions (the KKT form of the capped problem).
    free = phi < cap - 1e-12
    ratio = phi[free] / torch.softmax(-s / 0.1, dim=0)[free]
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-10)


def test_cascading_caps_and_target_at_cap() -> None:
    s = torch.tensor([0.0, 0.01, 0.02, 3.0, 3.0, 3.0, 3.0, 3.0], dtype=torch.float64)
    phi = bi_sparsity(s, 0.5, 0.05, 0.85)
    assert int((phi > 0.85 - 1e-12).sum()) == 3
    assert abs(float(phi.mean()) - 0.5) < 1e-12
    at_cap = bi_sparsity(s, 0.85, 0.05, 0.85)
    assert torch.allclose(at_cap, torch.full_like(at_cap, 0.85), atol=1e-12)


def test_large_temperature_is_uniform() -> None:
    phi = bi_sparsity(_scores(), 0.3, 1e6, 0.85)
    assert torch.allclose(phi, uniform_sparsity(12, 0.3), atol=1e-6)
    assert torch.equal(uniform_sparsity(4, 0.3), torch.full((4,), 0.3, dtype=torch.float64))


def test_monotone_in_block_influence() -> None:
    for seed in range(5):
        s = _scores(16, seed)
        phi = bi_sparsity(s, 0.4, 0.05, 0.85)
        order = torch.argsort(s)
        # Ascending influence ⇒ non-increasing sparsity.
        assert bool((phi[order][1:] <= phi[order][:-1] + 1e-15).all())


def test_zero_target_and_bad_targets() -> None:
    assert torch.equal(bi_sparsity(_scores(), 0.0, 0.1, 0.85), torch.zeros(12, dtype=torch.float64))
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match=str(bad)):
            bi_sparsity(_scores(), bad, 0.1, 0.85)
    with pytest.raises(ValueError, match="0.9"):
        bi_sparsity(_scores(), 0.9, 0.1, 0.85)
    with pytest.raises(ValueError, match="temperature"):
        bi_sparsity(_scores(), 0.3, 0.0, 0.85)


def test_kept_dim_rounding() -> None:
    assert kept_dim(10, 0.25) == 8  # 7.5 rounds half up
    assert kept_dim(48, 0.0) == 48
    assert kept_dim(48, 0.3) == 34  # 33.6
    assert kept_dim(48, 0.3, multiple=8) == 32
    assert kept_dim(50, 0.0, multiple=8) == 50  # full width is never "aligned" away
    assert kept_dim(64, 0.99) == 1
    assert kept_dim(64, 0.99, multiple=2) == 2  # RoPE pairs: never an odd width
    assert kept_dim(64, 0.99, multiple=8, minimum=10) == 16
    assert kept_dim(8, 0.5, multiple=2) == 4
    with pytest.raises(ValueError):
        kept_dim(0, 0.5)


def test_svd_rank_matches_parameter_count() -> None:
    m, n = 64, 32
    for phi in (0.1, 0.3, 0.5):
        r = svd_rank_for_sparsity(m, n, phi)
        assert abs(r * (m + n) - (1 - phi) * m * n) <= (m + n) / 2
    assert svd_rank_for_sparsity(m, n, 0.999) == 1
    assert svd_rank_for_sparsity(m, n, 0.0) <= min(m, n)


def test_tiny_temperature_underflow() -> None:
    # softmax underflows to one-hot: the cap and the exact mean must still hold.
    phi = bi_sparsity(_scores(), 0.5, 1e-6, 0.85)
    assert abs(float(phi.mean()) - 0.5) < 1e-12
    assert float(phi.max()) <= 0.85 + 1e-15
    assert bool(torch.isfinite(phi).all())
