"""calibration.product_precision: Gram products formed below FP64 and added to FP64 sums stay close to the all-FP64
sums, the solve on them stays finite and close on a hostile case (massive and near-duplicate channels), and a
store made so is its own artifact that records its precision."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_config, tiny_overrides

from pipeline.artifacts import ArtifactPaths, read_manifest
from pipeline.capture.stats import add_gram_upper, gram_blocks, mirror_upper
from pipeline.config import ConfigError, validate
from pipeline.methods.modegpt.layer import mlp_quadratic_error
from pipeline.modegpt import nystrom_mlp, vo_residual, vo_svd
from pipeline.readers import open_store
from stages import capture, tokenize


def _hostile(tokens: int, n: int, seed: int = 0) -> torch.Tensor:
    """Activations with a few channels ~1e3x the rest (massive activations) and near-duplicate channel pairs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, n, generator=g, dtype=torch.float64)
    x[:, :3] *= 1e3
    x[:, 10:20] = x[:, 20:30] + 1e-4 * torch.randn(tokens, 10, generator=g, dtype=torch.float64)
    return x.float()  # what a float32 forward pass hands the hooks


def _gram(batches: list[torch.Tensor], precision: str) -> torch.Tensor:
    n = batches[0].shape[1]
    acc, blocks = torch.zeros(n, n, dtype=torch.float64), gram_blocks(n)
    for x in batches:
        add_gram_upper(acc, x, blocks, precision)
    mirror_upper(acc, blocks)
    return acc


@pytest.mark.parametrize(("precision", "tolerance"), [("fp32", 1e-6), ("tf32", 1e-6), ("bf16", 1e-2)])
def test_lower_precision_products_with_fp64_sums_stay_close(precision, tolerance) -> None:
    batches = [_hostile(256, 800, seed) for seed in range(6)]  # 800 columns: the block-triangular path
    exact = _gram(batches, "fp64")
    fast = _gram(batches, precision)
    assert fast.dtype == torch.float64 and not torch.equal(fast, exact)
    assert float((fast - exact).norm() / exact.norm()) < tolerance
    assert torch.equal(fast, fast.T)


def test_the_solve_on_fp32_products_is_finite_and_close_on_a_hostile_case() -> None:
    tokens = 6 * 256
    batches = [_hostile(256, 96, seed) for seed in range(6)]
    exact, fast = (_gram(batches, p) / tokens for p in ("fp64", "fp32"))
    w_down = torch.randn(96, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    errors = {}
    for name, corr in (("fp64", exact), ("fp32", fast)):
        mlp = nystrom_mlp(corr, w_down, 48, corr_w=corr @ w_down, refit="shrink", tokens=tokens)
        assert torch.isfinite(mlp.w_down).all()
        # judged on the exact correlation: what the compressed module really does
        errors[name] = float(mlp_quadratic_error(exact, w_down, exact @ w_down, mlp.index, mlp.w_down))
    assert errors["fp32"] == pytest.approx(errors["fp64"], rel=1e-3)
    attn = _gram([b[:, :64] for b in batches], "fp64") / tokens
    w_v = torch.randn(2, 64, 16, dtype=torch.float64)
    w_o = torch.randn(4, 16, 64, dtype=torch.float64)
    residuals = {}
    for name, corr in (("fp64", attn), ("fp32", _gram([b[:, :64] for b in batches], "fp32") / tokens)):
        vo = vo_svd(corr, w_v, w_o, 8)
        assert torch.isfinite(vo.w_v).all() and torch.isfinite(vo.w_o).all()
        residuals[name] = vo_residual(attn, w_v, w_o, vo)
    assert residuals["fp32"] == pytest.approx(residuals["fp64"], rel=1e-3)


def test_a_fp32_store_is_its_own_artifact_and_records_its_precision(tmp_path, tiny_model_dirs) -> None:
    overrides = tiny_overrides(tmp_path, tiny_model_dirs["llama"], "llama")
    exact_cfg = compose_config(overrides)
    fast_cfg = compose_config([*overrides, "calibration.product_precision=fp32"])
    tokenize.run(exact_cfg)
    capture.run(exact_cfg)
    capture.run(fast_cfg)
    assert ArtifactPaths(fast_cfg).store != ArtifactPaths(exact_cfg).store
    assert read_manifest(ArtifactPaths(fast_cfg).store).config["product_precision"] == "fp32"
    assert "product_precision" not in read_manifest(ArtifactPaths(exact_cfg).store).config
    exact, fast = open_store(exact_cfg)[0].read_layer(1), open_store(fast_cfg)[0].read_layer(1)
    for name in ("attn_gram", "mlp_gram"):
        assert torch.allclose(fast[name], exact[name], rtol=1e-5, atol=1e-6 * float(exact[name].abs().max()))


def test_an_unknown_precision_fails_in_one_line() -> None:
    with pytest.raises(ConfigError, match=r"calibration.product_precision='fp16' is invalid: expected one of fp64"):
        validate(compose_config(["calibration.product_precision=fp16"]))
