import pytest
import torch

from pipeline.capture.stats import add_gram_upper, gram_blocks, mirror_upper


@pytest.mark.parametrize("n", [7, 576, 1536, 2000])
def test_block_triangular_gram_equals_full(n: int) -> None:
    blocks = gram_blocks(n)
    assert blocks[0][0] == 0 and blocks[-1][1] == n and len(blocks) <= 4
    assert all(b == c for (_, b), (c, _) in zip(blocks, blocks[1:], strict=False))  # contiguous
    x = torch.randn(300, n, dtype=torch.float64)
    acc = torch.zeros(n, n, dtype=torch.float64)
    for part in x.split(128):
        add_gram_upper(acc, part, blocks)
    mirror_upper(acc, blocks)
    torch.testing.assert_close(acc, x.T @ x, rtol=1e-12, atol=1e-9)
