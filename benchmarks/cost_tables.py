"""The tables ``cost_at_scale.py`` prints from its measurements: per-part seconds for one layer, the whole-model CPU
extrapolation, whole-model FLOPs, the projected GPU times and the memory per stage (formulas in ``cost_model.py``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from cost_model import (
    EFFICIENCY,
    GIB,
    GPUS,
    PAPER_SEQ_LEN,
    PAPER_SEQUENCES,
    PAPER_TOKENS,
    PROBE_POSITIONS,
    PROBE_SEQUENCES,
    Shape,
    backward_flops,
    fit_line,
    flops_total,
    forward_flops,
    gpu_flops,
    gpu_seconds,
    memory_rows,
    merge,
    probe_head_flops,
    product_flops,
    solve_flops_at,
)

SOLVE_PARTS = ("Type-I solve", "Type-II solve", "Type-III solve", "error curves: MLP", "error curves: attention",
               "weights to FP64")
# One probe sequence (PROBE_POSITIONS tokens) through one block, and through the head once per model.
PROBE_PARTS = ("Fisher probe: block forward", "Fisher probe: recomputed forward", "Fisher probe: block backward",
               "Fisher probe: LM head")
PROBE_BLOCKS = "Fisher probe: blocks (forward, recompute, backward)"
PROBE_HEAD = "Fisher probe: LM head (once per model)"


def probe_part_flops(s: Shape, part: str) -> float:
    """Nominal FLOPs of one measured probe part for one sequence."""
    if part == "Fisher probe: block backward":
        return backward_flops(s, 1, PROBE_POSITIONS)
    if part == "Fisher probe: LM head":
        return probe_head_flops(s) / PROBE_SEQUENCES
    return forward_flops(s, 1, PROBE_POSITIONS)


def cpu_layer_seconds(result: dict[str, Any], rate: float, reference: dict[str, Any] | None
                      ) -> dict[str, tuple[float, str]]:
    """Per-layer CPU seconds of each part at the paper's calibration, and how each was obtained.

    Token-proportional parts come from the fit over the measured token counts (forward: 128 sequences of 2048, so
    the fit's b at the longest measured sequence; the attention's T² share makes this a slight underestimate when
    2048 was not measured). The probe's parts are its measured per-sequence seconds × PROBE_SEQUENCES (the head's
    divided by the layers: it runs once per model). Solve parts measured at a capped MLP width are scaled by their
    FLOP ratio; shapes whose solve was not run take the FLOP rate ``reference`` (the largest measured shape)
    achieved."""
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
    probe = result["probe"]
    dtype = probe.get("dtype", "float32")
    blocks = sum(probe[p] for p in PROBE_PARTS[:3])
    out[PROBE_BLOCKS] = (PROBE_SEQUENCES * blocks, f"measured per sequence × {PROBE_SEQUENCES} sequences ({dtype})")
    out[PROBE_HEAD] = (PROBE_SEQUENCES * probe["Fisher probe: LM head"] / s.layers,
                       f"measured per sequence × {PROBE_SEQUENCES}, over {s.layers} layers ({dtype}, FP64 softmax)")
    real = solve_flops_at(s, s.mlp, rate)
    solve = result.get("solve")
    basis = solve if solve is not None else (reference or {}).get("solve")
    basis_shape = s if solve is not None else Shape(**reference["shape"]) if reference else None
    if basis is not None and basis_shape is not None:
        measured_flops = solve_flops_at(basis_shape, basis["solve_mlp"], rate)
        for part in SOLVE_PARTS:
            seconds = basis[part]
            if part in real:
                ratio = flops_total(real[part]) / flops_total(measured_flops[part])
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


def fmt_s(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.0f} s"


def _print_measured(results: list[dict[str, Any]], shapes: list[Shape], rate: float) -> None:
    print("\n### Measured on this machine, one layer (seconds)\n")
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
        where = f"one sequence of {PROBE_POSITIONS} positions, {probe.get('dtype', 'float32')}"
        for part in PROBE_PARTS:
            flops = probe_part_flops(s, part)
            note = where + (f", vocabulary {s.vocab}, FP64 log-softmax" if part.endswith("head") else "")
            print(f"| {s.name} | {part} | {probe[part]:.3f} | – | {flops / 1e9:.1f} | "
                  f"{flops / probe[part] / 1e9:.1f} | {note} |")
        if "Fisher probe: real one-block batch" in probe:
            parts = sum(probe[p] for p in PROBE_PARTS)
            print(f"| {s.name} | check: `probe._gradient_batch`, one block + head | "
                  f"{probe['Fisher probe: real one-block batch']:.3f} | – | – | – | the parts above sum to "
                  f"{parts:.3f} (the real call ran first, cold) |")
        if "solve" in r:
            sv = r["solve"]
            measured = solve_flops_at(s, sv["solve_mlp"], rate)
            for part in SOLVE_PARTS:
                f = flops_total(measured[part]) if part in measured else 0.0
                rate_s = f"{f / sv[part] / 1e9:.1f}" if f else "–"
                note = "D capped" if sv["solve_mlp"] < s.mlp else ""
                print(f"| {s.name} | {part} | {sv[part]:.2f} | {sv['solve_mlp']} | {f / 1e9:.0f} | {rate_s} | {note} |")
        if "assembly" in r:
            print(f"| {s.name} | assembly (build_compressed_model) | {r['assembly']:.3f} | – | – | – | "
                  "gathers, copies |")


def _print_projection(shapes: list[Shape], rate: float) -> None:
    print(f"\n### Projected whole-model time on GPUs ({PAPER_SEQUENCES} × {PAPER_SEQ_LEN} tokens; a projection from "
          f"FLOP and byte counts, not a measurement; efficiency assumed: GEMM {EFFICIENCY['gemm']:.0%}, "
          f"Cholesky/triangular {EFFICIENCY['factor']:.0%}, eigh {EFFICIENCY['eigh']:.0%} of peak, host link "
          f"{EFFICIENCY['pcie']:.0%})\n")
    parts = list(gpu_flops(shapes[0], rate))
    print("| shape | GPU | products in | " + " | ".join(parts) + " | total |")
    print("|---|---|---|" + "---|" * (len(parts) + 1))
    for s in shapes:
        work = gpu_flops(s, rate)
        for gpu_name, gpu in GPUS.items():
            for products in ("fp64", "tf32"):
                cells = {part: gpu_seconds(merge(w), gpu, products) for part, w in work.items()}
                total = sum(cells.values())
                print(f"| {s.name} | {gpu_name} | {'FP64 (as coded)' if products == 'fp64' else 'TF32 tensor'} | "
                      + " | ".join(fmt_s(cells[p]) for p in parts) + f" | {fmt_s(total)} |")
    print("\nSpecs used (TFLOP/s, TB/s, GB/s):\n")
    for gpu_name, gpu in GPUS.items():
        print(f"- {gpu_name}: {gpu['source']}")


def print_tables(results: list[dict[str, Any]], rate: float, batch: int) -> None:
    shapes = [Shape(**r["shape"]) for r in results]
    _print_measured(results, shapes, rate)

    print(f"\n### Whole model on this machine at the paper's calibration ({PAPER_SEQUENCES} × {PAPER_SEQ_LEN} "
          "tokens), extrapolated from the measurements\n")
    reference = next((r for r in reversed(results) if "solve" in r), None)
    for r, s in zip(results, shapes, strict=True):
        rows = cpu_layer_seconds(r, rate, reference)
        total = sum(v for v, _ in rows.values()) * s.layers
        print(f"**{s.name}** ({s.layers} layers): {fmt_s(total)} in all\n")
        print("| part | per layer | whole model | how |\n|---|---|---|---|")
        for part, (seconds, how) in rows.items():
            print(f"| {part} | {fmt_s(seconds)} | {fmt_s(seconds * s.layers)} | {how} |")
        print()

    print("### Whole-model FLOPs at the paper's calibration, and the fitted growth\n")
    print("| shape | capture forward (BF16) | capture products | Fisher probe blocks (BF16) | Fisher probe head "
          "(BF16) | error curves (FP64) | solve (FP64) | products per token per layer | solve per layer |")
    print("|---|---|---|---|---|---|---|---|---|")
    for s in shapes:
        f = {k: v.get("bf16", 0.0) + v.get("products", 0.0) + sum(x for key, x in v.items() if key.startswith("fp64"))
             for k, v in gpu_flops(s, rate).items()}
        print(f"| {s.name} | {f['capture: forward'] / 1e15:.1f} PFLOP | {f['capture: products'] / 1e15:.1f} PFLOP | "
              f"{f['Fisher probe: blocks'] / 1e15:.2f} PFLOP | {f['Fisher probe: head'] / 1e15:.2f} PFLOP | "
              f"{f['error curves'] / 1e12:.1f} TFLOP | {f['solve (Type-I/II/III)'] / 1e12:.1f} TFLOP | "
              f"{product_flops(s, 1) / 1e9:.2f} GFLOP | {f['solve (Type-I/II/III)'] / s.layers / 1e12:.2f} TFLOP |")
    print("\nGrowth: capture products 2·tokens·(3d² + D²)·(10/16 computed: upper block triangle); forward "
          "2·tokens·(block params) + 2·T²·d per sequence; Fisher probe per block forward + recomputed forward + "
          "backward (input gradients only: 1× the linears, 2× attention), about 3 forward passes, over "
          f"{PROBE_SEQUENCES} × {PROBE_POSITIONS} tokens, so L block-triples, "
          "plus the head 2·2·d·vocab per token once; "
          "Type-I D³ + 2D²d + k³/3 + 2k²d + 2kDd; Type-III 13d³ + n_kv·d²(6d_H + 4k); curves D³ + D³/3 + 3D²d + 13d³. "
          f"Tokens enter only the capture (linearly); the probe's are fixed ({PROBE_SEQUENCES} × {PROBE_POSITIONS}).")

    _print_projection(shapes, rate)

    print(f"\n### Peak memory per stage, layer by layer (batch {batch}; capture {batch} × {PAPER_SEQ_LEN}, probe "
          f"{batch} × {PROBE_POSITIONS}; rate {rate}): device unless marked host or disk\n")
    table = {s.name: memory_rows(s, batch, rate) for s in shapes}
    print("| | " + " | ".join(table) + " |\n|---|" + "---|" * len(table))
    for item in table[shapes[0].name]:
        print(f"| {item} | " + " | ".join(f"{rows[item] / GIB:.1f} GiB" for rows in table.values()) + " |")
