"""Cost of each part of a compression at the field's shapes: one decoder layer of Llama-3-8B, Llama-2-13B and
Llama-3-70B, measured on this CPU with the pipeline's own code, fitted, and projected to whole models on GPUs.

    PYTHONPATH=. .venv/bin/python benchmarks/cost_at_scale.py                          # 8B, 13B, 70B shapes
    PYTHONPATH=. .venv/bin/python benchmarks/cost_at_scale.py --shapes llama3-8b --tokens 256 512 --save r.json
    PYTHONPATH=. .venv/bin/python benchmarks/cost_at_scale.py --load r.json            # tables only

One layer is built at each real shape with random weights (``pipeline.tiny.random_model``; FP32, because this
CPU runs BF16 matmuls at well under 1 GFLOP/s) and timed part by part:

- capture: the block's forward pass and the FP64 correlation sums (``LayerStatsCollector``'s hooks, the same
  objects ``pipeline.capture.runner`` attaches), at several token counts so that time = a + b·tokens can be fitted;
- the KL probe: one block pass with ``probe_by_noise._perturbing``'s noise hook and one without, over the probe's
  positions; the whole probe is layers² + 2·layers such passes per probe sequence (``probe_by_noise._probe_batch``);
- the solve: ``solve_modegpt_layer`` (Type-I, II and III timed by wrapping their functions, as
  ``solve_profile.py`` does), ``module_error_curves`` (the error curves) and ``build_compressed_model``.

Where the CPU cannot hold or finish a part at the real shape, it is measured smaller and projected by its FLOP
count, and the tables say so: the solve runs at an MLP width capped by ``--solve-mlp-width`` (several D×D FP64
matrices at once), not at all for the shapes outside ``--solve-shapes`` (a 8192² eigendecomposition takes minutes
here), and the capture's MLP Gram accumulates over the first ``--gram-width`` columns only where the full D×D FP64
sum does not fit ``--memory-gib`` (the 70B's 28672² is 6.1 GiB).

The GPU columns are projections, not measurements: each part's FLOPs (counted by the formulas below, per kind of
kernel) divided by the datasheet peak of the precision it runs in times an assumed efficiency (``EFFICIENCY``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import resource
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from pipeline.adapters import ModelAdapter, adapter_for, output_source
from pipeline.assembly.build import build_compressed_model
from pipeline.capture import LayerStats, LayerStatsCollector, stat_shapes
from pipeline.capture.output_head import LOGIT_BUDGET

# the noise estimator the probe used before PROBE_VERSION 4 (8 x 512 tokens): what these probe rows model
from pipeline.config import compose_config
from pipeline.methods.modegpt import ModegptSettings
from pipeline.methods.modegpt import curves as modegpt_curves
from pipeline.methods.modegpt import layer as modegpt_layer
from pipeline.methods.modegpt.probe_by_noise import POSITIONS as PROBE_POSITIONS  # noqa: E402
from pipeline.methods.modegpt.probe_by_noise import RELATIVE_NOISE as PROBE_RELATIVE_NOISE  # noqa: E402
from pipeline.methods.modegpt.probe_by_noise import SEQUENCES as PROBE_SEQUENCES  # noqa: E402
from pipeline.methods.modegpt.probe_by_noise import _perturbing
from pipeline.plan import LayerSolution
from pipeline.planning import plan_layer
from pipeline.tiny import random_model

GIB = 2**30
# The paper's calibration: 128 sequences of 2048 tokens.
PAPER_SEQUENCES, PAPER_SEQ_LEN = 128, 2048
PAPER_TOKENS = PAPER_SEQUENCES * PAPER_SEQ_LEN

# Published config.json values (the same as benchmarks/scale.py's): hidden, MLP width, heads, KV heads, layers, vocab.
SHAPES: dict[str, dict[str, int]] = {
    "llama3-8b": dict(hidden=4096, mlp=14336, heads=32, kv_heads=8, layers=32, vocab=128256),
    "llama2-13b": dict(hidden=5120, mlp=13824, heads=40, kv_heads=40, layers=40, vocab=32000),
    "llama3-70b": dict(hidden=8192, mlp=28672, heads=64, kv_heads=8, layers=80, vocab=128256),
    # for the test and smoke runs
    "tiny": dict(hidden=256, mlp=1024, heads=4, kv_heads=2, layers=4, vocab=258),
}

# Datasheet peaks in TFLOP/s (dense, no structured sparsity) and memory bandwidth in TB/s. The A6000's FP64 is not on
# its datasheet: GA102 has 2 FP64 units per SM against 128 FP32 lanes (GA102 whitepaper), i.e. 1/64 of FP32 = 0.6;
# third-party tables (TechPowerUp) list 1.21 (1/32). The projection takes 0.6.
GPUS: dict[str, dict[str, Any]] = {
    "H100 SXM": dict(fp64=34.0, fp64_tensor=67.0, fp32=67.0, tf32=494.5, bf16=989.4, bandwidth=3.35,
                     source="NVIDIA H100 Tensor Core GPU datasheet (SXM5): FP64 34, FP64 tensor 67, FP32 67, "
                            "TF32 tensor 989 / BF16 1979 with sparsity (half dense), 3.35 TB/s"),
    "A100 SXM 80GB": dict(fp64=9.7, fp64_tensor=19.5, fp32=19.5, tf32=156.0, bf16=312.0, bandwidth=2.039,
                          source="NVIDIA A100 Tensor Core GPU datasheet (SXM 80GB): FP64 9.7, FP64 tensor 19.5, "
                                 "FP32 19.5, TF32 tensor 156, BF16 312 (dense), 2,039 GB/s"),
    "RTX A6000": dict(fp64=0.6, fp64_tensor=0.6, fp32=38.7, tf32=77.4, bf16=154.8, bandwidth=0.768,
                      source="NVIDIA RTX A6000 datasheet: FP32 38.7, tensor 309.7 (FP16, sparse); GA102 whitepaper: "
                             "TF32 tensor 77.4 / BF16 154.8 dense; FP64 1/64 of FP32 (see above); 768 GB/s"),
}
# Assumed fraction of peak each kind of kernel reaches on a GPU at these sizes (assumptions, not measurements):
# large GEMMs (the Gram products, the forward's linears) run near peak; Cholesky and triangular solves (cuSOLVER
# potrf/trsm) about half that; the symmetric eigensolver (syevd: a memory-bound tridiagonalisation) far less.
EFFICIENCY = {"gemm": 0.6, "factor": 0.3, "eigh": 0.1}

PARTS = ("capture: forward", "capture: FP64 products", "KL probe: block pass", "KL probe: perturbed pass",
         "error curves: MLP", "error curves: attention", "Type-I solve", "Type-II solve", "Type-III solve",
         "weights to FP64", "assembly")


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
    def block_params(self) -> int:
        """Linear weights of one block (Llama: q, k, v, o and the gated MLP; no biases)."""
        d, kv = self.hidden, self.kv_heads * self.head_dim
        return 2 * d * d + 2 * d * kv + 3 * d * self.mlp


# ---------------------------------------------------------------------------------------------------------------
# FLOP counts (nominal: 2 per multiply-add; factorizations by their textbook counts, as in benchmarks/flops.py)


def gram_fraction(n: int) -> float:
    """The share of an n×n Gram product the capture computes: only the upper block triangle (stats.gram_blocks)."""
    from pipeline.capture.stats import gram_blocks

    k = len(gram_blocks(n))
    return (k * (k + 1) / 2) / (k * k)


def product_flops(s: Shape, tokens: float) -> float:
    """FP64 correlation sums per layer: attention input d², MLP input d², o_proj input (n_h·d_H)², MLP Gram D²."""
    grams = [s.hidden, s.hidden, s.heads * s.head_dim, s.mlp]
    return tokens * sum(2 * n * n * gram_fraction(n) for n in grams)


def forward_flops(s: Shape, sequences: float, seq_len: int) -> float:
    """One block over ``sequences`` × ``seq_len`` tokens: the linears plus causal attention (2·T²·d per sequence,
    benchmarks/flops.py's convention)."""
    return sequences * (2 * s.block_params * seq_len + 2 * seq_len**2 * s.hidden)


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


def probe_head_flops(s: Shape) -> float:
    """The probe's LM head: 2·layers + 1 streams × probe tokens × 2·d·vocab (the FP64 log-softmax and KL are
    element-wise, bandwidth-bound, and left to ``probe_head_bytes``)."""
    return (2 * s.layers + 1) * PROBE_SEQUENCES * PROBE_POSITIONS * 2 * s.hidden * s.vocab


def probe_head_bytes(s: Shape) -> float:
    """FP64 log-probabilities written and read back (about 4 passes over positions × vocab per stream)."""
    return (2 * s.layers + 1) * PROBE_SEQUENCES * PROBE_POSITIONS * s.vocab * 8 * 4


def probe_passes(layers: int) -> tuple[int, int]:
    """(plain, perturbed) block passes per probe sequence: block i runs the 2i streams perturbed below it, its two
    perturbed passes and the clean one (probe_by_noise._probe_batch), so Σ (2i + 1) = L² plain and 2L perturbed."""
    return layers * layers, 2 * layers


def kept(full: int, rate: float, multiple: int = 1) -> int:
    from pipeline.modegpt import kept_dim

    return kept_dim(full, rate, multiple=multiple)


# ---------------------------------------------------------------------------------------------------------------
# Measurement


def build_layer(s: Shape, mlp: int | None = None, seed: int = 0) -> tuple[torch.nn.Module, ModelAdapter]:
    """A one-block Llama at shape ``s`` (MLP width ``mlp`` if given) with random weights and a byte vocabulary:
    the real vocabulary only matters for the probe's head, which is counted in FLOPs instead."""
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=s.hidden, intermediate_size=mlp or s.mlp, num_attention_heads=s.heads,
                         num_key_value_heads=s.kv_heads, num_hidden_layers=1, vocab_size=258, bos_token_id=256,
                         eos_token_id=257, pad_token_id=257, max_position_embeddings=4096, rms_norm_eps=1e-5,
                         rope_theta=500000.0, tie_word_embeddings=True)
    model = random_model(config, seed=seed)
    return model, adapter_for(model, "llama")


@contextlib.contextmanager
def timed(owner: Any, names: tuple[str, ...], spent: dict[str, float]) -> Iterator[None]:
    """Wrap ``owner``'s attributes ``names`` (module functions or class methods) so each call adds its wall time
    to ``spent[name]`` (benchmarks/solve_profile.py's approach: the code under test runs unchanged)."""
    originals = {name: getattr(owner, name) for name in names}

    def wrap(name: str, fn: Callable) -> Callable:
        def run(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - start
        return run

    try:
        for name, fn in originals.items():
            setattr(owner, name, wrap(name, fn))
        yield
    finally:
        for name, fn in originals.items():
            setattr(owner, name, fn)


# The collector's per-batch hooks and its once-per-layer mirror of the upper block triangles.
COLLECTOR_HOOKS = ("_attn_input", "_mlp_hidden", "_mlp_input", "_o_input", "_query", "_key", "add_block_influence",
                   "finish")


def _block_inputs(adapter: ModelAdapter, sequences: int, seq_len: int, seed: int = 0
                  ) -> tuple[torch.Tensor, dict[str, Any]]:
    ids = torch.randint(0, 256, (sequences, seq_len), generator=torch.Generator().manual_seed(seed))
    return adapter.block_inputs(ids)


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@torch.no_grad()
def measure_capture(adapter: ModelAdapter, s: Shape, tokens: int, gram_width: int) -> dict[str, float]:
    """Forward and FP64-sum seconds of one capture batch of ``tokens`` tokens (one sequence), as capture_layers runs
    it: the collector on the block, the block's forward, Block Influence, and the layer's closing mirror.

    ``gram_width`` < D accumulates the MLP Gram over its first columns only (the hook then computes
    (gram_width/D)² of the products); its time is scaled back by (D/gram_width)², which the FLOP count makes exact
    up to the kernel's efficiency at the smaller blocks."""
    block = adapter.decoder_layers()[0]
    hidden, kwargs = _block_inputs(adapter, 1, tokens)
    forward = _seconds(lambda: adapter.run_block(block, hidden, kwargs))
    shapes = stat_shapes(s.hidden, s.mlp, adapter.head_layout())
    shapes["mlp_gram"] = (gram_width, gram_width)
    stats = LayerStats.zeros(shapes, "cpu")
    spent: dict[str, float] = {}
    with timed(LayerStatsCollector, COLLECTOR_HOOKS, spent):
        with LayerStatsCollector(adapter.layer(0), adapter.head_layout(), stats) as collector:
            out = adapter.run_block(block, hidden, kwargs)
            collector.add_block_influence(hidden, out)
            collector.finish()
    scale = (s.mlp / gram_width) ** 2
    products = sum(t * (scale if name == "_mlp_hidden" else 1.0) for name, t in spent.items())
    del stats
    return {"capture: forward": forward, "capture: FP64 products": products,
            "mlp_gram_scaled": float(gram_width < s.mlp)}


@torch.no_grad()
def measure_probe(adapter: ModelAdapter) -> dict[str, float]:
    """One block pass over one probe sequence (PROBE_POSITIONS tokens), plain and with the probe's noise hook on
    o_proj and on down_proj (the mean of the two: the probe perturbs each once per block)."""
    block, layer = adapter.decoder_layers()[0], adapter.layer(0)
    hidden, kwargs = _block_inputs(adapter, 1, PROBE_POSITIONS, seed=1)
    adapter.run_block(block, hidden, kwargs)
    plain = _seconds(lambda: adapter.run_block(block, hidden, kwargs))
    perturbed = []
    for linear in (layer.o_proj, layer.down_proj):
        sigma: list[torch.Tensor] = []
        handle = output_source(linear)[0].register_forward_hook(
            _perturbing(linear, PROBE_RELATIVE_NOISE, [0], sigma))
        try:
            perturbed.append(_seconds(lambda: adapter.run_block(block, hidden, kwargs)))
        finally:
            handle.remove()
    return {"KL probe: block pass": plain, "KL probe: perturbed pass": sum(perturbed) / 2}


def _solve_stats(adapter: ModelAdapter, s: Shape, mlp: int, tokens: int) -> dict[str, torch.Tensor]:
    """The solver's sums for the block at MLP width ``mlp``: a ``tokens``-token capture, scaled to the paper's token
    count (so the shrunk refit runs, as it does with 262,144 tokens), plus a random positive diagonal so every
    correlation is full rank like a real calibration's (LAPACK's divide-and-conquer eigensolver deflates a rank-
    ``tokens`` spectrum and would run faster than on real data)."""
    hidden, kwargs = _block_inputs(adapter, 1, tokens, seed=2)
    stats = LayerStats.zeros(stat_shapes(s.hidden, mlp, adapter.head_layout()), "cpu")
    with torch.no_grad(), LayerStatsCollector(adapter.layer(0), adapter.head_layout(), stats) as collector:
        out = adapter.run_block(adapter.decoder_layers()[0], hidden, kwargs)
        collector.add_block_influence(hidden, out)
        collector.finish()
    sums = stats.as_dict()
    generator = torch.Generator().manual_seed(3)
    factor = PAPER_TOKENS / tokens
    for name, value in sums.items():
        sums[name] = value * factor
        if name.endswith("_gram"):
            diag = torch.diagonal(sums[name])
            diag += diag.mean() * (0.05 + 0.1 * torch.rand(diag.shape, generator=generator, dtype=torch.float64))
    sums["tokens"] = torch.tensor(float(PAPER_TOKENS), dtype=torch.float64)
    sums["sensitivity"] = torch.ones(2, dtype=torch.float64)  # curve_scale=kl reads the probe's result
    return sums


# Functions solve_modegpt_layer and module_error_curves call through their modules' namespaces, by part.
TYPE2 = ("cr_select", "_qk_score_dropped")
TYPE3 = ("vo_svd", "head_output_energy", "vo_residual")
CURVES_ATTENTION = ("head_output_energy", "qk_error_curve", "vo_rank_residuals")


def measure_solve(s: Shape, mlp: int, rate: float, stat_tokens: int) -> dict[str, Any]:
    """Type-I/II/III, the error curves and the weights' FP64 copy for one layer of shape ``s`` at MLP width ``mlp``,
    under the default config's solver settings with every module cut by ``rate``."""
    cfg = compose_config([])
    settings = ModegptSettings.from_config(cfg.compression)
    model, adapter = build_layer(s, mlp=mlp, seed=4)
    sums = _solve_stats(adapter, s, mlp, stat_tokens)
    heads, shape = adapter.head_layout(), adapter.block_shape()
    plan = plan_layer(rate, shape, settings.round_to)
    device = torch.device("cpu")
    start = time.perf_counter()
    dense = modegpt_layer.DenseLayer.from_layer(adapter.layer(0), heads, device)
    to_fp64 = time.perf_counter() - start
    spent: dict[str, float] = {}
    with timed(modegpt_layer, TYPE2 + TYPE3, spent):
        total = _seconds(lambda: modegpt_layer.solve_modegpt_layer(sums, dense, plan, heads, settings))
    type2 = sum(spent.get(n, 0.0) for n in TYPE2)
    type3 = sum(spent.get(n, 0.0) for n in TYPE3)
    curve_spent: dict[str, float] = {}
    with timed(modegpt_curves, CURVES_ATTENTION, curve_spent):
        curves = _seconds(lambda: modegpt_curves.module_error_curves(sums, dense, shape, settings,
                                                                     cfg.compression.max_sparsity))
    curves_attention = sum(curve_spent.values())
    # Type-I is the rest of solve_modegpt_layer: the means, C W_D, the Nyström selection and refit, and the error.
    return {"Type-I solve": total - type2 - type3, "Type-II solve": type2, "Type-III solve": type3,
            "error curves: MLP": curves - curves_attention, "error curves: attention": curves_attention,
            "weights to FP64": to_fp64, "solve_mlp": mlp, "mlp_keep": plan.mlp_width, "v_keep": plan.v_dim}


def _identity_like_solution(adapter: ModelAdapter, s: Shape, rate: float) -> tuple[Any, LayerSolution]:
    """A solution with the plan's shapes cut straight from the dense weights: assembly's cost depends on the shapes
    only (gathers and copies), so no solve is needed to time it."""
    from pipeline.plan import LayerPlan

    layer, heads = adapter.layer(0), adapter.head_layout()
    mlp_keep, qk_keep, v_keep = kept(s.mlp, rate), kept(s.head_dim, rate, 2), kept(s.head_dim, rate)
    index = torch.arange(mlp_keep)
    half = torch.arange(qk_keep // 2)
    qk_index = torch.cat([half, half + s.head_dim // 2]).expand(heads.num_kv_heads, qk_keep).clone()
    w_v = layer.v_proj.weight.detach().T.reshape(s.hidden, heads.num_kv_heads, s.head_dim).permute(1, 0, 2)
    w_o = layer.o_proj.weight.detach().T.reshape(heads.num_heads, s.head_dim, s.hidden)
    solution = LayerSolution(mlp_index=index, mlp_down=layer.down_proj.weight.detach().T[index].clone(),
                             qk_index=qk_index, v_weight=w_v[..., :v_keep].clone(), o_weight=w_o[:, :v_keep].clone(),
                             o_bias=None)
    plan = LayerPlan(sparsity=rate, mlp_width=mlp_keep, qk_dim=qk_keep, v_dim=v_keep)
    return plan, solution


def measure_assembly(model: torch.nn.Module, adapter: ModelAdapter, s: Shape, rate: float) -> float:
    plan, solution = _identity_like_solution(adapter, s, rate)
    return _seconds(lambda: build_compressed_model(model, adapter, [plan], [solution]))


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def measure_shape(s: Shape, tokens: list[int], solve_width: int | None, rate: float, memory_gib: float,
                  stat_tokens: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every part for one shape: capture at each token count, the probe's passes, assembly, and (``solve_width``
    not None) the solve at MLP width min(D, solve_width)."""
    # The full FP64 MLP Gram and the FP32 block must fit: otherwise accumulate a column slice (see measure_capture).
    weights_gib = s.block_params * 4 / GIB
    gram_width = s.mlp
    while (gram_width**2 * 8 + 3 * s.hidden**2 * 8) / GIB + weights_gib > memory_gib - 1.0:
        gram_width //= 2
    model, adapter = build_layer(s)
    result: dict[str, Any] = {"shape": dataclasses.asdict(s), "gram_width": gram_width, "capture": {}}
    measure_capture(adapter, s, min(tokens), gram_width)  # warm-up: first-call allocations are no part of the cost
    for t in tokens:
        result["capture"][str(t)] = measure_capture(adapter, s, t, gram_width)
        log(f"  {s.name} capture {t} tokens: " + ", ".join(f"{k} {v:.3f}" for k, v in result["capture"][str(t)].items())
            + f" (peak RSS {_rss_gib():.1f} GiB)")
    result["probe"] = measure_probe(adapter)
    log(f"  {s.name} probe: {result['probe']}")
    # Assembly holds the dense block, the solution and the compressed block at once: skip it where that would not fit.
    if 3 * weights_gib < memory_gib - 1.0:
        result["assembly"] = measure_assembly(model, adapter, s, rate)
        log(f"  {s.name} assembly: {result['assembly']:.3f} s")
    del model, adapter
    gc.collect()
    if solve_width is not None:
        result["solve"] = measure_solve(s, min(s.mlp, solve_width), rate, stat_tokens)
        log(f"  {s.name} solve: {result['solve']} (peak RSS {_rss_gib():.1f} GiB)")
    result["peak_rss_gib"] = _rss_gib()
    return result


# ---------------------------------------------------------------------------------------------------------------
# Fits, projections and tables


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


def _flops_total(parts: dict[str, float]) -> float:
    return sum(parts.values())


def solve_flops_at(s: Shape, mlp: int, rate: float) -> dict[str, dict[str, float]]:
    """FLOPs by kind of each solve part for shape ``s`` at MLP width ``mlp``."""
    keep, v_keep = kept(mlp, rate, 256 if mlp % 256 == 0 else 1), kept(s.head_dim, rate)
    return {"Type-I solve": type1_flops(s.hidden, mlp, keep),
            "Type-III solve": type3_flops(s.hidden, s.kv_heads, s.head_dim, v_keep),
            "error curves: MLP": curves_mlp_flops(s.hidden, mlp),
            "error curves: attention": curves_attention_flops(s.hidden, s.kv_heads, s.head_dim)}


def cpu_layer_seconds(result: dict[str, Any], rate: float, reference: dict[str, Any] | None
                      ) -> dict[str, tuple[float, str]]:
    """Per-layer CPU seconds of each part at the paper's calibration, and how each was obtained.

    Token-proportional parts come from the fit over the measured token counts (forward: 128 sequences of 2048, so
    the fit's b at the longest measured sequence; the attention's T² share makes this a slight underestimate when
    2048 was not measured). Solve parts measured at a capped MLP width are scaled by their FLOP ratio; shapes
    whose solve was not run take the FLOP rate ``reference`` (the largest measured shape) achieved."""
    s = Shape(**result["shape"])
    out: dict[str, tuple[float, str]] = {}
    cap = result["capture"]
    ts = sorted(int(t) for t in cap)
    longest = ts[-1]
    for part in ("capture: forward", "capture: FP64 products"):
        a, b = fit_line([float(t) for t in ts], [cap[str(t)][part] for t in ts])
        if part == "capture: forward":
            per_seq = cap[str(PAPER_SEQ_LEN)][part] if PAPER_SEQ_LEN in ts else a + b * PAPER_SEQ_LEN
            out[part] = (PAPER_SEQUENCES * per_seq, "measured at 2048" if PAPER_SEQ_LEN in ts
                         else f"fit to {longest} tokens, extrapolated")
        else:
            scaled = " (MLP Gram on a column slice, ×(D/slice)²)" if cap[str(longest)].get("mlp_gram_scaled") else ""
            out[part] = (a + b * PAPER_TOKENS, "fit a + b·tokens" + scaled)
    plain, perturbed = probe_passes(s.layers)
    probe = result["probe"]
    probe_total = PROBE_SEQUENCES * (plain * probe["KL probe: block pass"]
                                     + perturbed * probe["KL probe: perturbed pass"])
    out["KL probe (layers² + 2·layers passes)"] = (probe_total / s.layers, "measured passes × count, per layer")
    real = solve_flops_at(s, s.mlp, rate)
    solve = result.get("solve")
    basis = solve if solve is not None else (reference or {}).get("solve")
    basis_shape = s if solve is not None else Shape(**reference["shape"]) if reference else None
    if basis is not None and basis_shape is not None:
        measured_flops = solve_flops_at(basis_shape, basis["solve_mlp"], rate)
        for part in ("Type-I solve", "Type-II solve", "Type-III solve", "error curves: MLP", "error curves: attention",
                     "weights to FP64"):
            seconds = basis[part]
            if part in real:
                ratio = _flops_total(real[part]) / _flops_total(measured_flops[part])
                how = ("measured" if solve is not None and math.isclose(ratio, 1.0)
                       else f"×{ratio:.2f} FLOPs from {basis_shape.name} at D={basis['solve_mlp']}")
                out[part] = (seconds * ratio, how)
            elif part == "weights to FP64":
                solved = dataclasses.replace(basis_shape, mlp=basis["solve_mlp"])
                ratio = s.block_params / solved.block_params
                out[part] = (seconds * ratio, "measured" if math.isclose(ratio, 1.0)
                             else f"×{ratio:.2f} bytes from {basis_shape.name} at D={basis['solve_mlp']}")
            else:
                out[part] = (seconds, "measured" if solve is not None else f"as {basis_shape.name}")
    if "assembly" in result:
        out["assembly"] = (result["assembly"], "measured")
    elif reference is not None and "assembly" in reference:
        ratio = s.block_params / Shape(**reference["shape"]).block_params
        out["assembly"] = (reference["assembly"] * ratio, f"×bytes from {reference['shape']['name']}")
    return out


def gpu_flops(s: Shape, rate: float) -> dict[str, dict[str, float]]:
    """Whole-model FLOPs by kind and precision of each part at the paper's calibration (per model, all layers)."""
    L = s.layers
    plain, perturbed = probe_passes(L)
    probe_forward = (plain + perturbed) * forward_flops(s, PROBE_SEQUENCES, PROBE_POSITIONS)
    solves = solve_flops_at(s, s.mlp, rate)
    return {
        "capture: forward": {"bf16": L * forward_flops(s, PAPER_SEQUENCES, PAPER_SEQ_LEN)},
        "capture: products": {"products": L * product_flops(s, PAPER_TOKENS)},
        "KL probe": {"bf16": probe_forward + probe_head_flops(s)},
        "error curves": {f"fp64_{k}": L * v for part in ("error curves: MLP", "error curves: attention")
                         for k, v in solves[part].items()},
        "solve (Type-I/II/III)": {f"fp64_{k}": L * v for part in ("Type-I solve", "Type-III solve")
                                  for k, v in solves[part].items()},
    }


def _merge(d: dict[str, float]) -> dict[str, float]:
    merged: dict[str, float] = {}
    for k, v in d.items():
        merged[k] = merged.get(k, 0.0) + v
    return merged


def gpu_seconds(flops: dict[str, float], gpu: dict[str, Any], products: str) -> float:
    """Seconds at the GPU's peak for each precision times EFFICIENCY for each kind (FP64 factorizations run on the
    FP64 tensor cores where there are any: cuSOLVER's potrf/syevd use DGEMM inside)."""
    seconds = 0.0
    for key, work in flops.items():
        if key == "bf16":
            seconds += work / (gpu["bf16"] * 1e12 * EFFICIENCY["gemm"])
        elif key == "products":
            peak = gpu["fp64_tensor"] if products == "fp64" else gpu["tf32"]
            seconds += work / (peak * 1e12 * EFFICIENCY["gemm"])
        else:
            kind = key.removeprefix("fp64_")
            seconds += work / (gpu["fp64_tensor"] * 1e12 * EFFICIENCY[kind])
    return seconds


def _fmt_s(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.0f} s"


def memory_rows(s: Shape, batch: int, rate: float) -> dict[str, float]:
    """Peak device bytes per stage under the layer-by-layer design (formulas follow pipeline/capture/runner.py,
    probe_by_noise.py and layer.py; BF16 weights and activations, FP64 sums)."""
    d, big_d, L = s.hidden, s.mlp, s.layers
    weights = s.block_params * 2
    sums = 8 * (3 * d * d + big_d * big_d + (s.heads + s.kv_heads) * s.head_dim)
    hidden_all = PAPER_TOKENS * d * 2  # capture_layers keeps every batch's hidden state on the device
    tokens = batch * PAPER_SEQ_LEN
    # one batch: the MLP's up, gate and product in BF16 plus the hook's FP64 column blocks of h; attention input FP64
    activations = tokens * (big_d * (3 * 2 + 8) + d * 8)
    capture = weights + sums + hidden_all + activations
    probe_tokens = batch * PROBE_POSITIONS
    probe = (weights + (2 * L + 1) * probe_tokens * d * 2 + probe_tokens * big_d * 3 * 2
             + 3 * LOGIT_BUDGET * 8 + s.vocab * d * 2)
    # solve: the FP64 sums read back, C = sums / N, and the ridge leverage's C + λI, Cholesky factor and its inverse
    # (5 D×D at once), plus the layer in FP64
    solve = 5 * big_d * big_d * 8 + 3 * d * d * 8 + s.block_params * 8
    host = (L * s.block_params + 2 * s.vocab * d) * 2  # the whole model stays in host memory (untied head)
    return {"host: whole model (BF16)": host, "store on disk (FP64 sums, all layers)": L * sums,
            "weights (BF16)": weights, "FP64 sums": sums, "hidden states (all calibration tokens, BF16)": hidden_all,
            "one batch's activations": activations, "capture peak": capture, "KL probe peak": probe,
            "solve / curves peak": solve}


def print_tables(results: list[dict[str, Any]], rate: float, batch: int, products_note: str = "") -> None:
    shapes = [Shape(**r["shape"]) for r in results]
    print("\n### Measured on this CPU, one layer (seconds)\n")
    tokens = sorted({int(t) for r in results for t in r["capture"]})
    print("| shape | part | " + " | ".join(f"{t} tok" for t in tokens) + " | fit a (s) | fit b (ms/1k tok) | "
          "GFLOP at 2048 | GFLOP/s |")
    print("|---|---|" + "---|" * len(tokens) + "---|---|---|---|")
    for r, s in zip(results, shapes, strict=True):
        cap = r["capture"]
        ts = sorted(int(t) for t in cap)
        for part in ("capture: forward", "capture: FP64 products"):
            a, b = fit_line([float(t) for t in ts], [cap[str(t)][part] for t in ts])
            cells = [f"{cap[str(t)][part]:.3f}" if str(t) in cap else "–" for t in tokens]
            flops = (forward_flops(s, 1, ts[-1]) if part == "capture: forward" else product_flops(s, ts[-1]))
            label = part + (" ¹" if part.endswith("products") and cap[str(ts[-1])].get("mlp_gram_scaled") else "")
            gflop_at = (forward_flops(s, 1, 2048) if part == "capture: forward" else product_flops(s, 2048)) / 1e9
            print(f"| {s.name} | {label} | " + " | ".join(cells) + f" | {a:.3f} | {b * 1e6:.1f} | {gflop_at:.0f} | "
                  f"{flops / cap[str(ts[-1])][part] / 1e9:.1f} |")
    print("\n¹ MLP Gram accumulated over a column slice (memory), its time scaled by (D/slice)².\n")
    print("| shape | part | seconds | MLP width solved | GFLOP | GFLOP/s | note |\n|---|---|---|---|---|---|---|")
    for r, s in zip(results, shapes, strict=True):
        probe = r["probe"]
        flops = forward_flops(s, 1, PROBE_POSITIONS)
        for part in ("KL probe: block pass", "KL probe: perturbed pass"):
            print(f"| {s.name} | {part} | {probe[part]:.3f} | – | {flops / 1e9:.1f} | "
                  f"{flops / probe[part] / 1e9:.1f} | one sequence of {PROBE_POSITIONS} positions |")
        if "solve" in r:
            sv = r["solve"]
            measured = solve_flops_at(s, sv["solve_mlp"], rate)
            for part in ("Type-I solve", "Type-II solve", "Type-III solve", "error curves: MLP",
                         "error curves: attention", "weights to FP64"):
                f = _flops_total(measured[part]) if part in measured else 0.0
                rate_s = f"{f / sv[part] / 1e9:.1f}" if f else "–"
                note = "D capped" if sv["solve_mlp"] < s.mlp else ""
                print(f"| {s.name} | {part} | {sv[part]:.2f} | {sv['solve_mlp']} | {f / 1e9:.0f} | {rate_s} | {note} |")
        if "assembly" in r:
            print(f"| {s.name} | assembly (build_compressed_model) | {r['assembly']:.3f} | – | – | – | "
                  "gathers, copies |")

    print(f"\n### Whole model on this CPU at the paper's calibration ({PAPER_SEQUENCES} × {PAPER_SEQ_LEN} tokens), "
          "extrapolated from the measurements\n")
    reference = next((r for r in reversed(results) if "solve" in r), None)
    for r, s in zip(results, shapes, strict=True):
        rows = cpu_layer_seconds(r, rate, reference)
        total = sum(v for v, _ in rows.values()) * s.layers
        print(f"**{s.name}** ({s.layers} layers): {_fmt_s(total)} in all\n")
        print("| part | per layer | whole model | how |\n|---|---|---|---|")
        for part, (seconds, how) in rows.items():
            print(f"| {part} | {_fmt_s(seconds)} | {_fmt_s(seconds * s.layers)} | {how} |")
        print()

    print("### Whole-model FLOPs at the paper's calibration, and the fitted growth\n")
    print("| shape | capture forward (BF16) | capture products | KL probe (BF16) | error curves (FP64) | "
          "solve (FP64) | products per token per layer | solve per layer |")
    print("|---|---|---|---|---|---|---|---|")
    for s in shapes:
        f = {k: _flops_total(v) for k, v in gpu_flops(s, rate).items()}
        print(f"| {s.name} | {f['capture: forward'] / 1e15:.1f} PFLOP | {f['capture: products'] / 1e15:.1f} PFLOP | "
              f"{f['KL probe'] / 1e15:.1f} PFLOP | {f['error curves'] / 1e12:.1f} TFLOP | "
              f"{f['solve (Type-I/II/III)'] / 1e12:.1f} TFLOP | {product_flops(s, 1) / 1e9:.2f} GFLOP | "
              f"{f['solve (Type-I/II/III)'] / s.layers / 1e12:.2f} TFLOP |")
    print("\nGrowth: capture products 2·tokens·(3d² + D²)·(10/16 computed: upper block triangle); forward "
          "2·tokens·(block params) + 2·T²·d per sequence; KL probe (L² + 2L)·8·512 tokens of block passes; "
          "Type-I D³ + 2D²d + k³/3 + 2k²d + 2kDd; Type-III 13d³ + n_kv·d²(6d_H + 4k); curves D³ + D³/3 + 3D²d "
          "+ 13d³. Tokens enter only the capture (linearly); the probe's tokens are fixed (8 × 512).")

    print(f"\n### Projected whole-model time on GPUs ({PAPER_SEQUENCES} × {PAPER_SEQ_LEN} tokens; projection from FLOP "
          f"counts, efficiency assumed: GEMM {EFFICIENCY['gemm']:.0%}, Cholesky/triangular {EFFICIENCY['factor']:.0%},"
          f" eigh {EFFICIENCY['eigh']:.0%} of peak)\n")
    print("| shape | GPU | products in | capture forward | capture products | KL probe | error curves | solve | "
          "total |\n|---|---|---|---|---|---|---|---|---|")
    for s in shapes:
        flops = gpu_flops(s, rate)
        for gpu_name, gpu in GPUS.items():
            for products in ("fp64", "tf32"):
                cells = {part: gpu_seconds(_merge(f), gpu, products) for part, f in flops.items()}
                cells["KL probe"] += probe_head_bytes(s) / (gpu["bandwidth"] * 1e12)
                total = sum(cells.values())
                print(f"| {s.name} | {gpu_name} | {'FP64 (as coded)' if products == 'fp64' else 'TF32 tensor'} | "
                      + " | ".join(_fmt_s(cells[p]) for p in flops) + f" | {_fmt_s(total)} |")
    print("\nSpecs used (TFLOP/s, TB/s):\n")
    for gpu_name, gpu in GPUS.items():
        print(f"- {gpu_name}: {gpu['source']}")

    print(f"\n### Peak device memory per stage, layer by layer (capture batch {batch} × {PAPER_SEQ_LEN}, "
          f"rate {rate})\n")
    table = {s.name: memory_rows(s, batch, rate) for s in shapes}
    print("| | " + " | ".join(table) + " |\n|---|" + "---|" * len(table))
    for item in table[shapes[0].name]:
        print(f"| {item} | " + " | ".join(f"{rows[item] / GIB:.1f} GiB" for rows in table.values()) + " |")
    if products_note:
        print(products_note)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["llama3-8b", "llama2-13b", "llama3-70b"], choices=list(SHAPES))
    parser.add_argument("--tokens", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--tokens-70b", type=int, nargs="+", default=[256, 512],
                        help="token counts for llama3-70b (its capture is the slowest part here)")
    parser.add_argument("--solve-shapes", nargs="*", default=["llama3-8b", "llama2-13b"],
                        help="shapes whose solve is run (the others are projected from the last of these)")
    parser.add_argument("--solve-mlp-width", type=int, default=6144,
                        help="MLP width the solve runs at (capped for memory and time; scaled by FLOPs)")
    parser.add_argument("--stat-tokens", type=int, default=512, help="tokens captured for the solve's sums")
    parser.add_argument("--rate", type=float, default=0.25, help="every module cut by this fraction in the solve")
    parser.add_argument("--batch", type=int, default=2, help="calibration.batch_size for the memory table")
    parser.add_argument("--memory-gib", type=float, default=8.0)
    parser.add_argument("--save", default=None, help="write the raw measurements here (JSON) after each shape")
    parser.add_argument("--load", default=None, help="print the tables from a saved JSON instead of measuring")
    args = parser.parse_args()
    if args.load:
        with open(args.load) as f:
            results = json.load(f)
    else:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; random FP32 weights")
        results = []
        for name in args.shapes:
            tokens = args.tokens_70b if name == "llama3-70b" else args.tokens
            results.append(measure_shape(Shape.named(name), tokens,
                                         args.solve_mlp_width if name in args.solve_shapes else None, args.rate,
                                         args.memory_gib, args.stat_tokens))
            if args.save:
                with open(args.save, "w") as f:
                    json.dump(results, f, indent=1)
    print_tables(results, args.rate, args.batch)


if __name__ == "__main__":
    main()
