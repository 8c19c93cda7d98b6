"""Cost of each part of a compression at the field's shapes: one decoder layer of Llama-3-8B, Llama-2-13B and
Llama-3-70B, measured on this CPU with the pipeline's own code, fitted, and projected to whole models on GPUs
(the formulas and the GPU table are in ``cost_model.py``, the tables in ``cost_tables.py``).

    PYTHONPATH=. .venv/bin/python benchmarks/cost_at_scale.py                          # 8B, 13B, 70B shapes
    PYTHONPATH=. .venv/bin/python benchmarks/cost_at_scale.py --shapes llama3-8b --tokens 256 512 --save r.json
    PYTHONPATH=. .venv/bin/python benchmarks/cost_at_scale.py --load r.json            # tables only

One layer is built at each real shape with random weights (``pipeline.tiny.random_model``; FP32, because this
CPU runs BF16 matmuls at well under 1 GFLOP/s) and timed part by part:

- capture: the block's forward pass and the FP64 correlation sums (``LayerStatsCollector``'s hooks, the same
  objects ``pipeline.capture.runner`` attaches), at several token counts so that time = a + b·tokens can be fitted;
- the probe (PROBE_VERSION 4, ``pipeline.methods.modegpt.probe``): per block and probe sequence (PROBE_POSITIONS
  tokens) its forward pass keeping the block's input on the host, the recomputed forward with autograd on, and the
  backward to the block's input and its two module outputs; once per model the LM head's forward and backward with
  labels sampled from the model (``_output_gradient``: the real vocabulary, FP64 log-softmax). The layer is built
  for it with the shape's real vocabulary (tied embeddings, to halve the memory) in ``--probe-dtype`` (the pipeline
  runs it in the model's dtype, BF16 for these models; FP32 by default here, see above); the real
  ``_gradient_batch`` on that one-block model is timed once as a check on the parts. The whole probe is
  PROBE_SEQUENCES × (layers × the block's three passes + the head);
- the solve: ``layer.solve_modegpt_layer`` (Type-I, II and III timed by wrapping their functions, as
  ``solve_profile.py`` does), ``curves.module_error_curves`` (the error curves) and ``build_compressed_model``.

Where the CPU cannot hold or finish a part at the real shape, it is measured smaller and projected by its FLOP
count, and the tables say so: the solve runs at an MLP width capped by ``--solve-mlp-width`` (several D×D FP64
matrices at once), not at all for the shapes outside ``--solve-shapes`` (a 8192² eigendecomposition takes minutes
here), and the capture's MLP Gram accumulates over the first ``--gram-width`` columns only where the full D×D FP64
sum does not fit ``--memory-gib`` (the 70B's 28672² is 6.1 GiB).

The GPU columns are projections, not measurements: each part's FLOPs (counted by ``cost_model``'s formulas, per kind
of kernel) divided by the datasheet peak of the precision it runs in times an assumed efficiency (``EFFICIENCY``),
bytes by the bandwidth.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import resource
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from cost_model import GIB, PAPER_TOKENS, PROBE_POSITIONS, SHAPES, Shape, kept
from cost_tables import print_tables

from pipeline.adapters import ModelAdapter, adapter_for, output_source
from pipeline.assembly.build import build_compressed_model
from pipeline.capture import LayerStats, LayerStatsCollector, stat_shapes
from pipeline.capture.output_head import OutputHead
from pipeline.config import compose_config
from pipeline.methods.modegpt import ModegptSettings, probe
from pipeline.methods.modegpt import curves as modegpt_curves
from pipeline.methods.modegpt import layer as modegpt_layer
from pipeline.plan import LayerSolution
from pipeline.planning import plan_layer
from pipeline.solve_identity import PROBE_SEED
from pipeline.tiny import random_model

# ---------------------------------------------------------------------------------------------------------------
# Measurement


def build_layer(s: Shape, mlp: int | None = None, seed: int = 0, vocab: int | None = None
                ) -> tuple[torch.nn.Module, ModelAdapter]:
    """A one-block Llama at shape ``s`` (MLP width ``mlp`` if given) with random weights and a byte vocabulary, or
    ``vocab`` tokens (tied embeddings) where the head's cost is measured: only the probe's head reads it."""
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=s.hidden, intermediate_size=mlp or s.mlp, num_attention_heads=s.heads,
                         num_key_value_heads=s.kv_heads, num_hidden_layers=1, vocab_size=vocab or 258, bos_token_id=256,
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


def measure_probe(s: Shape, dtype: torch.dtype, vocab: int) -> dict[str, Any]:
    """The probe's work for one sequence of PROBE_POSITIONS tokens at shape ``s``: one block's forward (with the copy
    of its input to the host), recomputed forward and backward, as ``probe._gradient_batch`` runs them, and
    the head's ``_output_gradient`` (once per model) at ``vocab`` tokens, its time scaled to the shape's vocabulary."""
    model, adapter = build_layer(s, seed=5, vocab=vocab)
    model.to(dtype)
    block, layer = adapter.decoder_layers()[0], adapter.layer(0)
    ids = torch.randint(0, 256, (1, PROBE_POSITIONS), generator=torch.Generator().manual_seed(1))
    cpu = torch.device("cpu")
    totals = torch.zeros(1, 2, dtype=torch.float64)
    # The real code once (cold: it also warms the parts below): one block forward, the head, recompute and backward.
    real = _seconds(lambda: probe._gradient_batch(adapter, ids, 0, cpu, PROBE_SEED, totals))
    hidden, kwargs = adapter.block_inputs(ids)
    with torch.no_grad():
        forward = _seconds(lambda: (hidden.to("cpu", copy=True), block(hidden, **kwargs)))
        template = block(hidden, **kwargs)
    out = template[0] if isinstance(template, tuple) else template
    head = _seconds(lambda: probe._output_gradient(OutputHead(model, adapter.decoder_layers(), template, ids),
                                                            out, PROBE_SEED, 0))
    linears = (layer.o_proj, layer.down_proj)
    outputs: list[torch.Tensor] = []
    handles = [output_source(linear)[0].register_forward_hook(lambda m, a, o, seen=outputs: seen.append(o))
               for linear in linears]
    gradient = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(out.dtype)
    recomputed: list[torch.Tensor] = []

    def backward() -> None:
        grads = torch.autograd.grad(recomputed[0], [block_input, *outputs], grad_outputs=gradient)
        for linear, g in zip(linears, grads[1:], strict=True):
            float(g[..., output_source(linear)[1]].double().square().sum())

    try:
        block_input = hidden.to("cpu", copy=True).requires_grad_(True)
        with torch.enable_grad():
            recompute = _seconds(lambda: recomputed.append(adapter.run_block(block, block_input, kwargs)))
            back = _seconds(backward)
    finally:
        for handle in handles:
            handle.remove()
    return {"Fisher probe: block forward": forward, "Fisher probe: recomputed forward": recompute,
            "Fisher probe: block backward": back, "Fisher probe: LM head": head * s.vocab / vocab,
            "Fisher probe: real one-block batch": real, "head_measured": head, "vocab_measured": vocab,
            "dtype": str(dtype).removeprefix("torch.")}


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
                  stat_tokens: int, log: Callable[[str], None] = print, probe_dtype: torch.dtype = torch.float32
                  ) -> dict[str, Any]:
    """Every part for one shape: capture at each token count, assembly, the probe's passes, and (``solve_width``
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
    # Assembly holds the dense block, the solution and the compressed block at once: skip it where that would not fit.
    if 3 * weights_gib < memory_gib - 1.0:
        result["assembly"] = measure_assembly(model, adapter, s, rate)
        log(f"  {s.name} assembly: {result['assembly']:.3f} s")
    del model, adapter
    gc.collect()
    # The probe's one-block model with the real vocabulary (tied): halve the vocabulary measured until the block and
    # the embedding fit, and scale the head's time back by the vocabulary (its FLOPs and bytes are linear in it).
    vocab, item = s.vocab, torch.tensor([], dtype=probe_dtype).element_size()
    while (s.block_params + vocab * s.hidden) * item / GIB > memory_gib - 1.0 and vocab > 258:
        vocab //= 2
    result["probe"] = measure_probe(s, probe_dtype, vocab)
    gc.collect()
    log(f"  {s.name} probe: {result['probe']} (peak RSS {_rss_gib():.1f} GiB)")
    if solve_width is not None:
        result["solve"] = measure_solve(s, min(s.mlp, solve_width), rate, stat_tokens)
        log(f"  {s.name} solve: {result['solve']} (peak RSS {_rss_gib():.1f} GiB)")
    result["peak_rss_gib"] = _rss_gib()
    return result


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
    parser.add_argument("--probe-dtype", default="float32", choices=["float32", "bfloat16"],
                        help="dtype of the probe's passes (the pipeline uses the model's: BF16 is slow on this CPU)")
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
            solve_width = args.solve_mlp_width if name in args.solve_shapes else None
            results.append(measure_shape(Shape.named(name), tokens, solve_width, args.rate, args.memory_gib,
                                         args.stat_tokens, probe_dtype=getattr(torch, args.probe_dtype)))
            if args.save:
                with open(args.save, "w") as f:
                    json.dump(results, f, indent=1)
    print_tables(results, args.rate, args.batch)


if __name__ == "__main__":
    main()
