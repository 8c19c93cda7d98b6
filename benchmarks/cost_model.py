"""The work and memory model behind ``cost_at_scale.py``: the shapes, the GPU table, nominal FLOP and byte counts of
each part of a compression (2 FLOPs per multiply-add; factorizations by their textbook counts, as in
``flops.py``), the least-squares token fit, the GPU projection and the peak memory per stage of the layer-by-layer
design. Nothing here measures; everything here is a formula or a published number.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pipeline.capture.output_head import LOGIT_BUDGET
from pipeline.solve_identity import PROBE_POSITIONS, PROBE_SEQUENCES

GIB = 2**30
# The paper's calibration: 128 sequences of 2048 tokens.
PAPER_SEQUENCES, PAPER_SEQ_LEN = 128, 2048
PAPER_TOKENS = PAPER_SEQUENCES * PAPER_SEQ_LEN
# The probe (PROBE_VERSION 4, pipeline.methods.modegpt.probe): the first PROBE_POSITIONS positions of the first
# PROBE_SEQUENCES calibration sequences.
PROBE_TOKENS = PROBE_SEQUENCES * PROBE_POSITIONS
# FP64 bytes moved per logit by the probe's head (an estimate from the code, not a measurement): the cast to FP64
# (write 8), log_softmax (about 3 reads and a write), exp and cumsum for the sampled labels (2 reads, 2 writes), the
# one-hot gradient and log_softmax's backward (about 3 reads and writes) and the cast back: about 14 × 8 bytes.
HEAD_FP64_BYTES_PER_LOGIT = 14 * 8

# Published config.json values (the same as benchmarks/scale.py's): hidden, MLP width, heads, KV heads, layers, vocab.
SHAPES: dict[str, dict[str, int]] = {
    "llama3-8b": dict(hidden=4096, mlp=14336, heads=32, kv_heads=8, layers=32, vocab=128256),
    "llama2-13b": dict(hidden=5120, mlp=13824, heads=40, kv_heads=40, layers=40, vocab=32000),
    "llama3-70b": dict(hidden=8192, mlp=28672, heads=64, kv_heads=8, layers=80, vocab=128256),
    # for the test and smoke runs
    "tiny": dict(hidden=256, mlp=1024, heads=4, kv_heads=2, layers=4, vocab=258),
}

# Datasheet peaks in TFLOP/s (dense, no structured sparsity), memory bandwidth in TB/s and the host link in GB/s (one
# direction, x16). The A6000's FP64 is not on its datasheet: GA102 has 2 FP64 units per SM against 128 FP32 lanes
# (GA102 whitepaper), i.e. 1/64 of FP32 = 0.6; third-party tables (TechPowerUp) list 1.21 (1/32). The projection
# takes 0.6.
GPUS: dict[str, dict[str, Any]] = {
    "H100 SXM": dict(fp64=34.0, fp64_tensor=67.0, fp32=67.0, tf32=494.5, bf16=989.4, bandwidth=3.35, pcie=64.0,
                     source="NVIDIA H100 Tensor Core GPU datasheet (SXM5): FP64 34, FP64 tensor 67, FP32 67, "
                            "TF32 tensor 989 / BF16 1979 with sparsity (half dense), 3.35 TB/s, PCIe Gen5 (64 GB/s)"),
    "A100 SXM 80GB": dict(fp64=9.7, fp64_tensor=19.5, fp32=19.5, tf32=156.0, bf16=312.0, bandwidth=2.039, pcie=32.0,
                          source="NVIDIA A100 Tensor Core GPU datasheet (SXM 80GB): FP64 9.7, FP64 tensor 19.5, "
                                 "FP32 19.5, TF32 tensor 156, BF16 312 (dense), 2,039 GB/s, PCIe Gen4 (32 GB/s)"),
    "RTX A6000": dict(fp64=0.6, fp64_tensor=0.6, fp32=38.7, tf32=77.4, bf16=154.8, bandwidth=0.768, pcie=32.0,
                      source="NVIDIA RTX A6000 datasheet: FP32 38.7, tensor 309.7 (FP16, sparse); GA102 whitepaper: "
                             "TF32 tensor 77.4 / BF16 154.8 dense; FP64 1/64 of FP32 (see above); 768 GB/s; "
                             "PCIe Gen4 (32 GB/s)"),
}
# Assumed fraction of peak each kind of kernel reaches on a GPU at these sizes (assumptions, not measurements):
# large GEMMs (the Gram products, the forward's and backward's linears) run near peak; Cholesky and triangular solves
# (cuSOLVER potrf/trsm) about half that; the symmetric eigensolver (syevd: a memory-bound tridiagonalisation) far
# less; host↔device copies at 80% of the link.
EFFICIENCY = {"gemm": 0.6, "factor": 0.3, "eigh": 0.1, "pcie": 0.8}


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    mlp: int
    heads: int
    kv_heads: int
    layers: int
    vocab: int

    @classmethod
    def named(cls, name: str) -> Shape:
        return cls(name=name, **SHAPES[name])

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def block_params(self) -> int:
        """Linear weights of one block (Llama: q, k, v, o and the gated MLP; no biases)."""
        d = self.hidden
        return 2 * d * d + 2 * d * self.kv_dim + 3 * d * self.mlp


# ---------------------------------------------------------------------------------------------------------------
# FLOP counts


def gram_fraction(n: int) -> float:
    """The share of an n×n Gram product the capture computes: only the upper block triangle (stats.gram_blocks)."""
    from pipeline.capture.stats import gram_blocks

    k = len(gram_blocks(n))
    return (k * (k + 1) / 2) / (k * k)


def product_flops(s: Shape, tokens: float) -> float:
    """FP64 correlation sums per layer: attention input d², MLP input d², o_proj input (n_h·d_H)², MLP Gram D²."""
    grams = [s.hidden, s.hidden, s.heads * s.head_dim, s.mlp]
    return tokens * sum(2 * n * n * gram_fraction(n) for n in grams)


def attention_flops(s: Shape, sequences: float, seq_len: int) -> float:
    """Causal attention's two products per block (2·T²·d per sequence, benchmarks/flops.py's convention)."""
    return sequences * 2 * seq_len**2 * s.hidden


def forward_flops(s: Shape, sequences: float, seq_len: int) -> float:
    """One block over ``sequences`` × ``seq_len`` tokens: the linears plus causal attention."""
    return sequences * 2 * s.block_params * seq_len + attention_flops(s, sequences, seq_len)


def backward_flops(s: Shape, sequences: float, seq_len: int) -> float:
    """The probe's backward through one block: ``torch.autograd.grad`` asks for the block input's and the two module
    outputs' gradients only, never a weight's, so each linear costs one product (dX = dY·Wᵀ: 1× its forward, not the
    2× of a training step); attention's backward is four products against its forward's two (2×)."""
    return sequences * 2 * s.block_params * seq_len + 2 * attention_flops(s, sequences, seq_len)


def probe_block_flops(s: Shape, sequences: float = PROBE_SEQUENCES, seq_len: int = PROBE_POSITIONS) -> float:
    """Per block, what ``probe._gradient_batch`` runs: the forward pass (keeping the block's input on the
    host), the recomputed forward with autograd on, and the backward: about 3 forward passes."""
    return 2 * forward_flops(s, sequences, seq_len) + backward_flops(s, sequences, seq_len)


def probe_head_flops(s: Shape) -> float:
    """The probe's LM head, once per probe token and model: the head's product forward and its input gradient
    backward (2 × 2·d·vocab) in the model's dtype; the FP64 log-softmax, sampling and their backward are element-wise
    (``probe_head_bytes``)."""
    return PROBE_TOKENS * 2 * 2 * s.hidden * s.vocab


def probe_head_bytes(s: Shape) -> float:
    """FP64 logit traffic of the head (positions × vocab logits, HEAD_FP64_BYTES_PER_LOGIT each)."""
    return PROBE_TOKENS * s.vocab * HEAD_FP64_BYTES_PER_LOGIT


def probe_transfer_bytes(s: Shape, dtype_bytes: int = 2) -> float:
    """Host↔device bytes of the block-wise probe with the model on the host: every block goes to the device twice
    (forward, then recompute and backward) and its input goes down to the host and back up once."""
    return s.layers * (2 * s.block_params * dtype_bytes + 2 * PROBE_TOKENS * s.hidden * dtype_bytes)


def type1_flops(d: int, big_d: int, keep: int) -> dict[str, float]:
    """solve_modegpt_layer's MLP part: ridge leverage (Cholesky D³/3 + potri 2D³/3), C W_D (2D²d), the refit
    (Cholesky k³/3 + two triangular solves 2k²d) and the error (C_{:,J} W_D', 2kDd)."""
    return {"factor": big_d**3 + keep**3 / 3 + 2 * keep**2 * d, "gemm": 2 * big_d**2 * d + 2 * keep * big_d * d}


def type3_flops(d: int, kv: int, head_dim: int, keep: int) -> dict[str, float]:
    """vo_svd + head_output_energy + vo_residual: eigh of C (9d³), C^{±1/2} (4d³), the whitened and mapped-back
    values and the two energies (n_kv·d²·(6·d_H + 4k)); the small d×d_H and d_H×g·d SVDs are left out."""
    return {"eigh": 9 * d**3, "gemm": 4 * d**3 + kv * d**2 * (6 * head_dim + 4 * keep)}


def curves_mlp_flops(d: int, big_d: int) -> dict[str, float]:
    """module_error_curves' MLP part: C W_D (2D²d), the leverage keep order (D³), the permuted Cholesky (D³/3) and
    one triangular solve with d right-hand sides (D²d) that gives every prefix's residual."""
    return {"factor": big_d**3 + big_d**3 / 3 + big_d**2 * d, "gemm": 2 * big_d**2 * d}


def curves_attention_flops(d: int, kv: int, head_dim: int) -> dict[str, float]:
    """vo_rank_residuals (eigh 9d³, both roots 4d³, C^{1/2} W_V) and head_output_energy (W_Vᵀ C W_V)."""
    return {"eigh": 9 * d**3, "gemm": 4 * d**3 + 4 * kv * d**2 * head_dim}


def kept(full: int, rate: float, multiple: int = 1) -> int:
    from pipeline.modegpt import kept_dim

    return kept_dim(full, rate, multiple=multiple)


def solve_flops_at(s: Shape, mlp: int, rate: float) -> dict[str, dict[str, float]]:
    """FLOPs by kind of each solve part for shape ``s`` at MLP width ``mlp``."""
    keep, v_keep = kept(mlp, rate, 256 if mlp % 256 == 0 else 1), kept(s.head_dim, rate)
    return {"Type-I solve": type1_flops(s.hidden, mlp, keep),
            "Type-III solve": type3_flops(s.hidden, s.kv_heads, s.head_dim, v_keep),
            "error curves: MLP": curves_mlp_flops(s.hidden, mlp),
            "error curves: attention": curves_attention_flops(s.hidden, s.kv_heads, s.head_dim)}


def flops_total(parts: dict[str, float]) -> float:
    return sum(parts.values())


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares (a, b) of y = a + b·x (b alone through the origin when there is one point)."""
    if len(xs) == 1:
        return 0.0, ys[0] / xs[0]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    if b <= 0 or my - b * mx < 0:
        # Noise (a shared CPU, or fixed costs dominating tiny token counts) can tilt a two-point fit; a cost that
        # cannot shrink with tokens is then taken as proportional to the longest measurement.
        return 0.0, ys[-1] / xs[-1]
    return my - b * mx, b


# ---------------------------------------------------------------------------------------------------------------
# GPU projection


def gpu_flops(s: Shape, rate: float) -> dict[str, dict[str, float]]:
    """Whole-model work by kind and precision of each part at the paper's calibration (all layers): FLOPs, and for
    the probe also its FP64 logit bytes ("bytes") and host↔device bytes ("pcie")."""
    L = s.layers
    solves = solve_flops_at(s, s.mlp, rate)
    return {
        "capture: forward": {"bf16": L * forward_flops(s, PAPER_SEQUENCES, PAPER_SEQ_LEN)},
        "capture: products": {"products": L * product_flops(s, PAPER_TOKENS)},
        "Fisher probe: blocks": {"bf16": L * probe_block_flops(s)},
        "Fisher probe: head": {"bf16": probe_head_flops(s), "bytes": probe_head_bytes(s)},
        "Fisher probe: host↔device": {"pcie": probe_transfer_bytes(s)},
        "error curves": {f"fp64_{k}": L * v for part in ("error curves: MLP", "error curves: attention")
                         for k, v in solves[part].items()},
        "solve (Type-I/II/III)": {f"fp64_{k}": L * v for part in ("Type-I solve", "Type-III solve")
                                  for k, v in solves[part].items()},
    }


def merge(d: dict[str, float]) -> dict[str, float]:
    merged: dict[str, float] = {}
    for k, v in d.items():
        merged[k] = merged.get(k, 0.0) + v
    return merged


def gpu_seconds(work: dict[str, float], gpu: dict[str, Any], products: str) -> float:
    """Seconds at the GPU's peak for each precision times EFFICIENCY for each kind (FP64 factorizations run on the
    FP64 tensor cores where there are any: cuSOLVER's potrf/syevd use DGEMM inside); bytes at the memory bandwidth,
    host↔device bytes at the link's."""
    seconds = 0.0
    for key, amount in work.items():
        if key == "bf16":
            seconds += amount / (gpu["bf16"] * 1e12 * EFFICIENCY["gemm"])
        elif key == "products":
            peak = gpu["fp64_tensor"] if products == "fp64" else gpu["tf32"]
            seconds += amount / (peak * 1e12 * EFFICIENCY["gemm"])
        elif key == "bytes":
            seconds += amount / (gpu["bandwidth"] * 1e12)
        elif key == "pcie":
            seconds += amount / (gpu["pcie"] * 1e9 * EFFICIENCY["pcie"])
        else:
            kind = key.removeprefix("fp64_")
            seconds += amount / (gpu["fp64_tensor"] * 1e12 * EFFICIENCY[kind])
    return seconds


# ---------------------------------------------------------------------------------------------------------------
# Memory


def memory_rows(s: Shape, batch: int, rate: float) -> dict[str, float]:
    """Peak bytes per stage under the layer-by-layer design (formulas follow pipeline/capture/runner.py,
    methods/modegpt/probe.py and layer.py; BF16 weights and activations, FP64 sums)."""
    d, big_d, L = s.hidden, s.mlp, s.layers
    weights = s.block_params * 2
    sums = 8 * (3 * d * d + big_d * big_d + (s.heads + s.kv_heads) * s.head_dim)
    hidden_all = PAPER_TOKENS * d * 2  # capture_layers keeps every batch's hidden state on the device
    tokens = batch * PAPER_SEQ_LEN
    # one batch: the MLP's up, gate and product in BF16 plus the hook's FP64 column blocks of h; attention input FP64
    activations = tokens * (big_d * (3 * 2 + 8) + d * 8)
    capture = weights + sums + hidden_all + activations
    # The probe (modegpt/probe.py): one block, the embedding and the (untied) head on the device; the batch's hidden
    # state, its output and the gradients in and out; the recomputed block's saved activations (norms, q/k/v,
    # attention and o_proj outputs, residuals, gate/up/act/product: about 12d + 2·kv + 6D per token with the
    # backward's own temporaries); about 4 FP64 copies of one slice's logits (LOGIT_BUDGET) in the head.
    probe_tokens = batch * PROBE_POSITIONS
    embeddings = 2 * s.vocab * d * 2
    probe_hidden = 4 * probe_tokens * d * 2
    saved = probe_tokens * (12 * d + 2 * s.kv_dim + 6 * big_d) * 2
    probe = weights + embeddings + probe_hidden + saved + 4 * LOGIT_BUDGET * 8
    probe_host = L * probe_tokens * d * 2  # every block's input, kept on the host
    # solve: the FP64 sums read back, C = sums / N, and the ridge leverage's C + λI, Cholesky factor and its inverse
    # (5 D×D at once), plus the layer in FP64
    solve = 5 * big_d * big_d * 8 + 3 * d * d * 8 + s.block_params * 8
    host = (L * s.block_params + 2 * s.vocab * d) * 2  # the whole model stays in host memory (untied head)
    return {"host: whole model (BF16)": host, "host: probe's block inputs (all blocks, one batch)": probe_host,
            "store on disk (FP64 sums, all layers)": L * sums,
            "weights (BF16)": weights, "FP64 sums": sums, "hidden states (all calibration tokens, BF16)": hidden_all,
            "one batch's activations": activations, "capture peak": capture,
            "Fisher probe: recompute activations (one batch)": saved, "Fisher probe peak": probe,
            "solve / curves peak": solve}
