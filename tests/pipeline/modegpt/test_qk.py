"""Type-II (key-query): CR column selection, RoPE pair layout, GQA grouping, score reconstruction."""

from __future__ import annotations

import pytest
import torch

from pipeline.modegpt import cr_select, qk_residual, rope_frequency_index

N, D_MODEL, N_H, N_KV, D_H = 200, 16, 4, 2, 8
GROUP = N_H // N_KV
HALF = D_H // 2


def _qk(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Q [N, n_h, d_H] and K [N, n_kv, d_H] with heterogeneous column energies."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D_MODEL, generator=g, dtype=torch.float64)

    def proj(heads: int) -> torch.Tensor:
        w = torch.randn(D_MODEL, heads, D_H, generator=g, dtype=torch.float64) / D_MODEL**0.5
        scales = torch.logspace(-1.0, 1.0, D_H, dtype=torch.float64)
        perm = torch.stack([torch.randperm(D_H, generator=g) for _ in range(heads)])
        return torch.einsum("nd,dhk->nhk", x, w * scales[perm])

    return proj(N_H), proj(N_KV)


def _energies(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return q.square().sum(0), k.square().sum(0)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def _cos_sin(freqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """HF layout: positions × inverse frequencies, duplicated to [cos(f), cos(f)]."""
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def _rope_freqs(positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    return positions[:, None].to(torch.float64) * inv_freq[None, :]


INV_FREQ = 1.0 / (10000.0 ** (torch.arange(0, D_H, 2, dtype=torch.float64) / D_H))
POS = torch.arange(N) * 7 % 113  # arbitrary, non-monotone positions


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos[:, None, :] + _rotate_half(x) * sin[:, None, :]


def _scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Per-query-head scores [n_h, N, N]; KV heads repeated HF-style (head h uses KV head h // g)."""
    return torch.einsum("nhk,mhk->hnm", q, k.repeat_interleave(GROUP, dim=1))


def _gather(x: torch.Tensor, index: torch.Tensor, heads: int) -> torch.Tensor:
    """x [N, heads, d_H] → [N, heads, keep] with each head using its group's row of index."""
    rows = index.repeat_interleave(heads // index.shape[0], dim=0)
    return torch.gather(x, 2, rows.unsqueeze(0).expand(x.shape[0], -1, -1))


def _score_error(q: torch.Tensor, k: torch.Tensor, index: torch.Tensor) -> float:
    approx = _scores(_gather(q, index, N_H), _gather(k, index, N_KV))
    return float((_scores(q, k) - approx).square().sum())


@pytest.mark.parametrize("rope", [False, True])
def test_keep_full_is_identity(rope: bool) -> None:
    q, k = _qk()
    idx = cr_select(*_energies(q, k), D_H, rope)
    assert torch.equal(idx, torch.arange(D_H).expand(N_KV, -1))
    assert _score_error(q, k, idx) == 0.0


def test_no_rope_selection_is_sorted_top_scores() -> None:
    q, k = _qk()
    cq, ck = _energies(q, k)
    idx = cr_select(cq, ck, 5, rope=False)
    assert idx.shape == (N_KV, 5) and idx.dtype == torch.long
    score = (cq.reshape(N_KV, GROUP, D_H).sum(1) * ck).sqrt()
    for j in range(N_KV):
        assert torch.equal(idx[j], torch.sort(torch.topk(score[j], 5).indices).values)


def test_rope_pair_layout() -> None:
    q, k = _qk()
    idx = cr_select(*_energies(q, k), 4, rope=True)
    freq = rope_frequency_index(idx, D_H)
    assert freq.shape == (N_KV, 2)
    assert bool((freq[:, 1:] > freq[:, :-1]).all())
    assert torch.equal(idx, torch.cat([freq, freq + HALF], dim=1))
    with pytest.raises(ValueError, match="even"):
        cr_select(*_energies(q, k), 3, rope=True)
    with pytest.raises(ValueError, match="layout"):
        rope_frequency_index(torch.tensor([[0, 1, 2, 3]]), D_H)


def test_rope_pair_score_uses_both_halves() -> None:
    # Column 0 alone is the strongest, but pair (1, 1 + d_H/2) has more energy in total.
    cq = torch.ones(N_H, D_H, dtype=torch.float64)
    ck = torch.ones(N_KV, D_H, dtype=torch.float64)
    cq[:, 0] = 10.0
    cq[:, 1] = cq[:, 1 + HALF] = 6.0
    assert torch.equal(cr_select(cq, ck, 1, rope=False), torch.zeros(N_KV, 1, dtype=torch.long))
    assert torch.equal(cr_select(cq, ck, 2, rope=True), torch.tensor([[1, 1 + HALF]] * N_KV))


def test_gqa_sums_query_heads_of_each_group() -> None:
    cq = torch.ones(N_H, D_H, dtype=torch.float64)
    ck = torch.ones(N_KV, D_H, dtype=torch.float64)
    cq[1, 5] = 50.0  # head 1 belongs to group 0 (h // g), not to group 1 (h % n_kv)
    cq[2, 3] = 50.0  # head 2 belongs to group 1
    assert torch.equal(cr_select(cq, ck, 1, rope=False), torch.tensor([[5], [3]]))
    # Summing matters: two moderate heads of one group beat one strong head of it.
    cq = torch.ones(N_H, D_H, dtype=torch.float64)
    cq[0, 2] = cq[1, 2] = 4.0
    cq[0, 6] = 6.0
    assert torch.equal(cr_select(cq, ck, 1, rope=False)[0], torch.tensor([2]))


@pytest.mark.parametrize("rope", [False, True])
def test_compressed_scores_equal_restricted_dense(rope: bool) -> None:
    q, k = _qk()
    idx = cr_select(*_energies(q, k), 4, rope)
    if not rope:
        for h in range(N_H):
            j = h // GROUP
            dense = sum(torch.outer(q[:, h, i], k[:, j, i]) for i in idx[j].tolist())
            assert torch.allclose(q[:, h, idx[j]] @ k[:, j, idx[j]].T, dense, atol=1e-10)
        return
    cos, sin = _cos_sin(_rope_freqs(POS, INV_FREQ))
    q_rot, k_rot = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)
    freq = rope_frequency_index(idx, D_H)
    for h in range(N_H):
        j = h // GROUP
        # The compressed head: rotate_half on [S, S + d_H/2] with cos/sin of the kept frequencies only.
        cos_c, sin_c = _cos_sin(_rope_freqs(POS, INV_FREQ[freq[j]]))
        assert torch.allclose(cos_c, cos[:, idx[j]])
        qc = _apply_rope(q[:, h : h + 1, idx[j]], cos_c, sin_c)[:, 0]
        kc = _apply_rope(k[:, j : j + 1, idx[j]], cos_c, sin_c)[:, 0]
        dense = sum(torch.outer(q_rot[:, h, i], k_rot[:, j, i]) for i in idx[j].tolist())
        assert torch.allclose(qc @ kc.T, dense, atol=1e-10)


def test_selection_invariant_to_rope_rotation() -> None:
    for seed in range(3):
        q, k = _qk(seed)
        cos, sin = _cos_sin(_rope_freqs(POS, INV_FREQ))
        rot = _energies(_apply_rope(q, cos, sin), _apply_rope(k, cos, sin))
        plain = _energies(q, k)
        assert not torch.allclose(rot[0], plain[0], rtol=1e-3)  # single columns do change
        for keep in (2, 4, 6):
            assert torch.equal(cr_select(*rot, keep, rope=True), cr_select(*plain, keep, rope=True))


@pytest.mark.parametrize("rope", [False, True])
def test_cr_beats_random_selection(rope: bool) -> None:
    keep = 4
    ours, rand = 0.0, 0.0
    g = torch.Generator().manual_seed(7)
    for seed in range(4):
        q, k = _qk(seed)
        ours += _score_error(q, k, cr_select(*_energies(q, k), keep, rope))
        for _ in range(6):
            if rope:
                pairs = torch.stack([torch.sort(torch.randperm(HALF, generator=g)[: keep // 2]).values
                                     for _ in range(N_KV)])
                idx = torch.cat([pairs, pairs + HALF], dim=1)
            else:
                idx = torch.stack([torch.sort(torch.randperm(D_H, generator=g)[:keep]).values
                                   for _ in range(N_KV)])
            rand += _score_error(q, k, idx) / 6
    assert ours < 0.5 * rand


def test_qk_residual_matches_empirical() -> None:
    q, k = _qk(2)
    q_corr = torch.einsum("nhi,nhj->hij", q, q)
    k_corr = torch.einsum("nhi,nhj->hij", k, k)
    for keep, rope in ((3, False), (4, True), (D_H, False)):
        idx = cr_select(*_energies(q, k), keep, rope)
        assert qk_residual(q_corr, k_corr, idx) == pytest.approx(_score_error(q, k, idx), rel=1e-9, abs=1e-9)
