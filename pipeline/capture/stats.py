"""Per-layer FP64 sums that the solve stage needs, accumulated with forward hooks on one block.

Sums (never means) are kept, with the token count beside them, so calibration data can be added later
and data-parallel ranks can simply add their sums.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from pipeline.adapters import HeadLayout, LayerAdapter, output_source

STAT_NAMES = ("attn_gram", "mlp_gram", "q_energy", "k_energy", "bi_cos", "tokens", "mlp_in_gram", "o_in_gram",
              "inv_resid_in", "inv_resid_out")
# Read only by the whitened-SVD baseline (the grams) and the module-budget allocation (the inverse residual
# energies). Stores captured before they existed lack them and still solve the paper's MoDeGPT, so they are
# optional (no capture code-version bump): the methods that read them ask for a recapture when they are missing.
OPTIONAL_STATS = ("mlp_in_gram", "o_in_gram", "inv_resid_in", "inv_resid_out")


def stat_shapes(hidden: int, intermediate: int, heads: HeadLayout) -> dict[str, tuple[int, ...]]:
    """Per-layer shape of every statistic (the store adds a leading layer axis)."""
    shapes = {
        "attn_gram": (hidden, hidden),  # sum of x x^T over tokens, x = attention input (Type-III)
        "mlp_gram": (intermediate, intermediate),  # sum of h h^T, h = input of the down projection (Type-I)
        "q_energy": (heads.num_heads, heads.head_dim),  # sum of q_i^2 per head and column (Type-II)
        "k_energy": (heads.num_kv_heads, heads.head_dim),
        "bi_cos": (),  # sum over tokens of cos(block input, block output) (Block Influence)
        "tokens": (),  # token count
        "mlp_in_gram": (hidden, hidden),  # sum of u u^T, u = input of up/gate (after the MLP's norm)
        "o_in_gram": (heads.num_heads * heads.head_dim,) * 2,  # sum of a a^T, a = attention output before o_proj
        # sum of 1 / ||h||^2 over tokens of the block's input and output residual stream: the scale that turns a
        # module's output error into the relative change the next norm sees (robust to a few massive tokens)
        "inv_resid_in": (),
        "inv_resid_out": (),
    }
    return shapes


@dataclass
class LayerStats:
    attn_gram: torch.Tensor
    mlp_gram: torch.Tensor
    q_energy: torch.Tensor
    k_energy: torch.Tensor
    bi_cos: torch.Tensor
    tokens: torch.Tensor
    mlp_in_gram: torch.Tensor
    o_in_gram: torch.Tensor
    inv_resid_in: torch.Tensor
    inv_resid_out: torch.Tensor

    @classmethod
    def zeros(cls, shapes: dict[str, tuple[int, ...]], device: torch.device | str) -> LayerStats:
        return cls(**{k: torch.zeros(s, dtype=torch.float64, device=device) for k, s in shapes.items()})

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in STAT_NAMES}


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1])


def _flat64(t: torch.Tensor) -> torch.Tensor:
    return _flat(t).to(torch.float64)


GRAM_BLOCK = 384  # column blocks of at least this width; up to 4 blocks
# calibration.product_precision: how each batch's Gram products are formed before they are added to the FP64 sums.
# fp64 everywhere; fp32 at the FP32 rate; tf32 (CUDA: TF32 tensor cores, elsewhere fp32); bf16 (inputs rounded to
# BF16, products accumulated in FP32: CUDA's BF16 tensor cores, emulated elsewhere). The sums stay FP64 across
# batches, so the rounding is one batch's, not the whole calibration's.
PRODUCT_PRECISIONS = ("fp64", "fp32", "tf32", "bf16")


def gram_blocks(n: int) -> list[tuple[int, int]]:
    """Column ranges for a block-triangular Gram update: xᵀx is symmetric, so only blocks i <= j are computed
    (10 of 16 products with 4 blocks; benchmarks/capture.py shows the effect on the whole capture)."""
    k = max(1, min(4, n // GRAM_BLOCK))
    width = -(-n // k)
    return [(a, min(a + width, n)) for a in range(0, n, width)]


def _operand(x: torch.Tensor, precision: str) -> torch.Tensor:
    """x as a Gram product's operand: FP64, FP32, or rounded to BF16 (kept BF16 where CUDA multiplies it)."""
    if precision == "fp64":
        return x.to(torch.float64, memory_format=torch.contiguous_format)
    if precision == "bf16":
        rounded = x.to(torch.bfloat16, memory_format=torch.contiguous_format)
        return rounded if rounded.is_cuda else rounded.float()
    return x.to(torch.float32, memory_format=torch.contiguous_format)


def _add_product(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor, precision: str) -> None:
    """acc (FP64) += aᵀb formed at ``precision``."""
    if precision == "fp64":
        acc.addmm_(a.T, b)
    elif a.dtype == torch.bfloat16:  # CUDA: BF16 operands, FP32 accumulation
        acc.add_(torch.mm(a.T, b, out_dtype=torch.float32))
    elif precision == "tf32" and a.is_cuda:
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            acc.add_(a.T @ b)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = previous
    else:
        acc.add_(a.T @ b)


def add_gram_upper(acc: torch.Tensor, x: torch.Tensor, blocks: list[tuple[int, int]], precision: str = "fp64"
                   ) -> None:
    """acc += xᵀx (acc FP64) on the upper block triangle only (see :func:`mirror_upper`); x is [tokens, n] in any
    float dtype, converted block by block so no full copy is made besides the blocks themselves; each product is
    formed at ``precision`` (PRODUCT_PRECISIONS) and added to the FP64 sum."""
    cols = [_operand(x[:, a:b], precision) for a, b in blocks]
    for i, (a, b) in enumerate(blocks):
        for j in range(i, len(blocks)):
            c, d = blocks[j]
            _add_product(acc[a:b, c:d], cols[i], cols[j], precision)


def mirror_upper(acc: torch.Tensor, blocks: list[tuple[int, int]]) -> None:
    """Fill the lower block triangle from the upper one, once per layer."""
    for i, (a, b) in enumerate(blocks):
        for c, d in blocks[i + 1 :]:
            acc[c:d, a:b] = acc[a:b, c:d].T


class LayerStatsCollector:
    """Hooks one block's modules and adds each forward pass's contribution to :class:`LayerStats`."""

    def __init__(self, layer: LayerAdapter, heads: HeadLayout, stats: LayerStats, precision: str = "fp64") -> None:
        self.heads = heads
        self.stats = stats
        self.precision = precision  # of the Gram products (PRODUCT_PRECISIONS); the sums are FP64 whatever it is
        self._attn_blocks = gram_blocks(stats.attn_gram.shape[0])
        self._mlp_blocks = gram_blocks(stats.mlp_gram.shape[0])
        self._mlp_in_blocks = gram_blocks(stats.mlp_in_gram.shape[0])
        self._o_in_blocks = gram_blocks(stats.o_in_gram.shape[0])
        # q and k may be slices of one fused projection's output (Phi-3's qkv_proj).
        (q_module, self._q_cols), (k_module, self._k_cols) = output_source(layer.q_proj), output_source(layer.k_proj)
        self._handles = [
            layer.attention_input.register_forward_pre_hook(self._attn_input),
            q_module.register_forward_hook(self._query),
            k_module.register_forward_hook(self._key),
            layer.mlp_hidden.register_forward_pre_hook(self._mlp_hidden),
            output_source(layer.up_proj)[0].register_forward_pre_hook(self._mlp_input),
            output_source(layer.o_proj)[0].register_forward_pre_hook(self._o_input),
        ]

    def _attn_input(self, module: Any, args: tuple[torch.Tensor, ...]) -> None:
        x = _flat(args[0])
        add_gram_upper(self.stats.attn_gram, x, self._attn_blocks, self.precision)
        self.stats.tokens += x.shape[0]

    def _mlp_hidden(self, module: Any, args: tuple[torch.Tensor, ...]) -> None:
        h = _flat(args[0])
        add_gram_upper(self.stats.mlp_gram, h, self._mlp_blocks, self.precision)

    def _mlp_input(self, module: Any, args: tuple[torch.Tensor, ...]) -> None:
        add_gram_upper(self.stats.mlp_in_gram, _flat(args[0]), self._mlp_in_blocks, self.precision)

    def _o_input(self, module: Any, args: tuple[torch.Tensor, ...]) -> None:
        add_gram_upper(self.stats.o_in_gram, _flat(args[0]), self._o_in_blocks, self.precision)

    def _query(self, module: Any, args: Any, out: torch.Tensor) -> None:
        # Pre-RoPE energies: a rotary pair's energy is the same before and after the rotation.
        q = _flat64(out[..., self._q_cols])
        self.stats.q_energy += q.square().sum(0).view(self.heads.num_heads, self.heads.head_dim)

    def _key(self, module: Any, args: Any, out: torch.Tensor) -> None:
        k = _flat64(out[..., self._k_cols])
        self.stats.k_energy += k.square().sum(0).view(self.heads.num_kv_heads, self.heads.head_dim)

    def add_block_influence(self, block_in: torch.Tensor, block_out: torch.Tensor) -> None:
        h_in, h_out = _flat64(block_in), _flat64(block_out)
        self.stats.bi_cos += F.cosine_similarity(h_in, h_out, dim=-1).sum()
        tiny = torch.finfo(torch.float64).tiny
        self.stats.inv_resid_in += h_in.square().sum(-1).clamp_min(tiny).reciprocal().sum()
        self.stats.inv_resid_out += h_out.square().sum(-1).clamp_min(tiny).reciprocal().sum()

    def finish(self) -> None:
        """Complete the symmetric Gram matrices; call once after the layer's last batch."""
        mirror_upper(self.stats.attn_gram, self._attn_blocks)
        mirror_upper(self.stats.mlp_gram, self._mlp_blocks)
        mirror_upper(self.stats.mlp_in_gram, self._mlp_in_blocks)
        mirror_upper(self.stats.o_in_gram, self._o_in_blocks)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> LayerStatsCollector:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()
