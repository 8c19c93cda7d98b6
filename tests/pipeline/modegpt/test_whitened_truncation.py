"""Whitened (SVD-LLM) truncation against the direct formula and against plain SVD."""

from __future__ import annotations

import pytest
import torch

from pipeline.modegpt import F64, output_error, truncated_svd, whitened_truncated_svd


def _correlated_inputs(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=F64) * torch.logspace(0, -2, d, dtype=F64)  # anisotropic inputs
    return torch.randn(n, d, generator=g, dtype=F64) @ mix


@pytest.mark.parametrize(("d_in", "d_out", "rank"), [(24, 16, 5), (16, 32, 8), (20, 20, 1)])
def test_whitened_truncation_error_is_the_discarded_spectrum_and_beats_plain_svd(d_in, d_out, rank) -> None:
    x = _correlated_inputs(400, d_in, seed=d_in + rank)
    corr = x.T @ x / x.shape[0]
    w = torch.randn(d_in, d_out, generator=torch.Generator().manual_seed(1), dtype=F64)
    a, b = whitened_truncated_svd(w, corr, rank)
    assert a.shape == (d_in, rank) and b.shape == (rank, d_out)
    err = output_error(w, a @ b, corr)
    # direct formula: the discarded squared singular values of C^{1/2} W
    evals, evecs = torch.linalg.eigh(corr)
    s = torch.linalg.svdvals((evecs * evals.sqrt()) @ evecs.T @ w)
    assert float(err) == pytest.approx(float(s[rank:].square().sum()), rel=1e-8)
    assert float(err) == pytest.approx(float(((x @ w - x @ (a @ b)).square().sum()) / x.shape[0]), rel=1e-8)
    pa, pb = truncated_svd(w, rank)
    assert float(err) <= float(output_error(w, pa @ pb, corr)) * (1 + 1e-12)


def test_whitened_truncation_at_full_rank_reproduces_w_even_for_a_singular_correlation() -> None:
    x = _correlated_inputs(6, 12, seed=3)  # 6 samples: C has rank 6 of 12
    w = torch.randn(12, 8, generator=torch.Generator().manual_seed(2), dtype=F64)
    a, b = whitened_truncated_svd(w, x.T @ x, 8)
    assert torch.allclose(a @ b, w, atol=1e-6)
    with pytest.raises(ValueError, match="corr must be"):
        whitened_truncated_svd(w, torch.eye(5, dtype=F64), 2)
