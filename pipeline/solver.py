"""One layer of MoDeGPT from its dense weights and captured statistics, and the per-layer size plan.

This is the glue between adapters (which know where the weights are) and the pure math in
``pipeline.modegpt``: it turns HF modules into X W-layout FP64 tensors, sums into means, and the math's
outputs into a :class:`~pipeline.plan.LayerSolution` plus per-module reconstruction errors.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from pipeline.adapters import BlockShape, HeadLayout, LayerAdapter
from pipeline.engine_shapes import width_multiple
from pipeline.modegpt import (
    F64,
    MlpSolution,
    ModuleCurve,
    VoSolution,
    allocate_widths,
    bi_sparsity,
    cr_select,
    fold_value_bias,
    head_output_energy,
    kept_dim,
    leverage_keep_order,
    nested_mlp_residuals,
    nystrom_mlp,
    qk_error_curve,
    uniform_sparsity,
    vo_rank_residuals,
    vo_residual,
    vo_svd,
)
from pipeline.plan import LayerPlan, LayerSolution
from pipeline.solve_identity import PROBED_SCALES

log = logging.getLogger(__name__)

MODULE_ORDER = ("mlp", "qk", "vo")  # the order of a layer's widths in LayerPlan

# A channel whose mean square exceeds this multiple of the median's (RMS 100x the median) carries a massive
# activation: its correlation entries dwarf the rest, and the solve leans on the floors and ridges below.
MASSIVE_RATIO = 1e4

# compression.curve_scale: the unit of the module error curves (allocation=error); kl (PROBED_SCALES) is measured by
# the KL probe (pipeline.capture.sampled_fisher), which the solve stage runs before the curves
CURVE_SCALES = ("residual", "kl")


@dataclass(frozen=True)
class SolverSettings:
    ridge_lambda: float = 1.0
    nystrom_ridge: float = 1e-6
    eig_floor: float = 1e-8
    round_to: int = 1
    mlp_refit: str = "paper"  # paper (ridge toward 0) | shrink (ridge toward the dense rows, kept/tokens)
    # error curves in units of: residual (E 1/‖h‖²) | kl (a KL probe's tr F: ``stats["sensitivity"]``)
    curve_scale: str = "residual"

    @classmethod
    def from_config(cls, compression: Any) -> SolverSettings:
        """The settings a ``compression`` config asks for, field by field by name (round_to: the shape's)."""
        values = {f.name: compression[f.name] for f in dataclasses.fields(cls)}
        return cls(**(values | {"round_to": width_multiple(compression)}))


@dataclass
class DenseLayer:
    """One block's weights in X W layout (FP64): heads split out where the method works per head."""

    up: Tensor  # [d, D]
    gate: Tensor | None  # [d, D]
    down: Tensor  # [D, d]
    v: Tensor  # [n_kv, d, d_H]
    o: Tensor  # [n_h, d_H, d]
    v_bias: Tensor | None  # [n_kv * d_H]
    o_bias: Tensor | None  # [d]

    @classmethod
    def from_layer(cls, layer: LayerAdapter, heads: HeadLayout, device: torch.device) -> DenseLayer:
        def xw(module: torch.nn.Linear) -> Tensor:
            return module.weight.detach().to(device, F64).T

        def bias(module: torch.nn.Linear) -> Tensor | None:
            return None if module.bias is None else module.bias.detach().to(device, F64)

        d = layer.q_proj.in_features
        return cls(
            up=xw(layer.up_proj),
            gate=None if layer.gate_proj is None else xw(layer.gate_proj),
            down=xw(layer.down_proj),
            v=xw(layer.v_proj).reshape(d, heads.num_kv_heads, heads.head_dim).permute(1, 0, 2),
            o=xw(layer.o_proj).reshape(heads.num_heads, heads.head_dim, d),
            v_bias=bias(layer.v_proj),
            o_bias=bias(layer.o_proj),
        )


def layer_sparsities(block_influence: Tensor, target: float, allocation: str, temperature: float,
                     max_sparsity: float) -> Tensor:
    if allocation == "uniform":
        return uniform_sparsity(block_influence.numel(), target)
    return bi_sparsity(block_influence, target, temperature, max_sparsity)


def module_weight_params(shape: BlockShape) -> dict[str, int]:
    """Weight parameters of each module of a dense block: Type-I (MLP), Type-II (q, k), Type-III (v, o)."""
    full, head = shape.intermediate_size, shape.heads.head_dim
    return {"mlp": shape.linear_params(full, 0, 0, {}), "qk": shape.linear_params(0, head, 0, {}),
            "vo": shape.linear_params(0, 0, head, {})}


def cut_fraction(shape: BlockShape) -> float:
    """The fraction of a dense block's weights in the modules the solve may cut."""
    params = module_weight_params(shape)
    return sum(n for m, n in params.items() if m in shape.compressible) / sum(params.values())


def module_sparsity(sparsity: float, shape: BlockShape) -> float:
    """The sparsity of the modules the family lets MoDeGPT cut, such that the block still loses ``sparsity`` of
    its weights when the other modules stay at full width (the plain layer sparsity when every module is cut)."""
    params = module_weight_params(shape)
    cut = sum(n for m, n in params.items() if m in shape.compressible)
    if cut == sum(params.values()):
        return float(sparsity)
    return min(float(sparsity) * sum(params.values()) / max(cut, 1), 1.0)


def plan_layer(sparsity: float, shape: BlockShape, round_to: int) -> LayerPlan:
    heads = shape.heads
    phi = module_sparsity(sparsity, shape)

    def cut(module: str) -> float:
        return phi if module in shape.compressible else 0.0

    return LayerPlan(
        sparsity=float(sparsity),
        mlp_width=kept_dim(shape.intermediate_size, cut("mlp"), multiple=round_to),
        qk_dim=kept_dim(heads.head_dim, cut("qk"), multiple=2 if heads.rope else 1, minimum=2 if heads.rope else 1),
        v_dim=kept_dim(heads.head_dim, cut("vo")),
    )


def kept_linear_params(plan: LayerPlan, shape: BlockShape) -> int:
    """Linear weights one layer keeps under ``plan`` (biases aside)."""
    return shape.linear_params(plan.mlp_width, plan.qk_dim, plan.v_dim, {})


def removed_share(plans: list[LayerPlan], shape: BlockShape) -> float:
    """The fraction of the blocks' linear weights that ``plans`` remove."""
    return 1.0 - sum(kept_linear_params(p, shape) for p in plans) / (shape.dense_linear_params({}) * len(plans))


def plan_layers(sparsities: Tensor, shape: BlockShape, round_to: int, target: float) -> list[LayerPlan]:
    """Every layer's plan from its sparsity (``plan_layer``), with MLP widths on a grid of ``round_to`` > 1 chosen
    so the blocks still lose ``target`` of their weights: rounding each layer to its nearest multiple alone can
    miss the budget by up to half a step per layer (one step of 256 is 17% of SmolLM2's MLP), which would compare
    allocations at unequal sizes. Widths start at the multiple below each layer's ideal width and the layers with
    the largest remainders get a step back while the budget allows (met from above)."""
    plans = [plan_layer(float(p), shape, round_to) for p in sparsities]
    if round_to <= 1 or "mlp" not in shape.compressible:
        return plans
    full = shape.intermediate_size
    ideal = [(1.0 - module_sparsity(float(p), shape)) * full for p in sparsities]
    floor = [full if w >= full else max(round_to, round_to * math.floor(w / round_to)) for w in ideal]
    plans = [dataclasses.replace(p, mlp_width=w) for p, w in zip(plans, floor, strict=True)]

    def kept(plan: LayerPlan) -> int:
        return kept_linear_params(plan, shape)

    dense = shape.dense_linear_params({})
    allowed = (1.0 - target) * dense * len(plans)
    total = sum(kept(p) for p in plans)
    for index in sorted(range(len(plans)), key=lambda i: floor[i] - ideal[i]):
        plan = plans[index]
        if plan.mlp_width >= full:
            continue
        wider = dataclasses.replace(plan, mlp_width=min(full, plan.mlp_width + round_to))
        if total - kept(plan) + kept(wider) <= allowed:
            total += kept(wider) - kept(plan)
            plans[index] = wider
    return [dataclasses.replace(p, sparsity=1.0 - kept(p) / dense) for p in plans]


def mlp_quadratic_error(corr: Tensor, w_down: Tensor, corr_down: Tensor, index: Tensor, new_down: Tensor) -> Tensor:
    """Tr(Eᵀ C E) for E = W_D − P_J W_D' (P_J scatters rows into J), from C W_D and C_{:,J} W_D' only:
    C E = C W_D − C_{:,J} W_D', so no D x D x d product beyond the one the caller already has."""
    diff = w_down.clone()
    diff[index] -= new_down
    return (diff * (corr_down - corr[:, index] @ new_down)).sum()


def _qk_score_dropped(q_energy: Tensor, k_energy: Tensor, qk_index: Tensor, heads: HeadLayout) -> Tensor:
    """Fraction of the CR score mass (the score the selection ranks by: per column, or per RoPE pair) dropped."""
    cq = q_energy.reshape(heads.num_kv_heads, heads.group_size, -1).sum(1)
    ck = k_energy
    index = qk_index.to(cq.device)
    if heads.rope:
        half = heads.head_dim // 2
        cq, ck = cq[:, :half] + cq[:, half:], ck[:, :half] + ck[:, half:]
        index = index[:, : index.shape[1] // 2]
    score = (cq * ck).clamp_min(0).sqrt()
    return 1.0 - score.gather(1, index).sum() / score.sum()


def _channel_notes(name: str, corr: Tensor, units: str) -> list[str]:
    """Dead channels (zero correlation diagonal) and massive ones (mean square far above the median)."""
    diag = torch.diagonal(corr)
    top = float(diag.max())
    notes = []
    dead = int((diag <= top * 1e-12).sum()) if top > 0 else diag.numel()
    if dead:
        notes.append(f"{dead} dead {name} {units}")
    median = float(diag.median())
    if median > 0 and top > MASSIVE_RATIO * median:
        count = int((diag > MASSIVE_RATIO * median).sum())
        notes.append(f"{count} massive-activation {name} {units} (RMS up to {(top / median) ** 0.5:.3g}x the median)")
    return notes


def safeguard_notes(tokens: float, mlp_corr: Tensor, attn_corr: Tensor, mlp: MlpSolution, vo: VoSolution,
                    settings: SolverSettings) -> list[str]:
    """What was unusual about a layer's statistics and which of the solver's safeguards fired, one phrase each."""
    notes = []
    d, full = attn_corr.shape[0], mlp_corr.shape[0]
    if tokens < max(d, full):
        short = " and ".join(f"{what} {n}" for what, n in (("hidden size", d), ("MLP width", full)) if tokens < n)
        notes.append(f"{tokens:.0f} calibration tokens < {short}: correlations rank-deficient")
    notes += _channel_notes("MLP", mlp_corr, "units") + _channel_notes("attention-input", attn_corr, "channels")
    if mlp.leverage_eigh:
        notes.append("leverage scores fell back to eigh (C + lambda I not positive definite)")
    if mlp.ridge_pivots:
        notes.append(f"C_JJ ridge {mlp.ridge:.3g} carried {mlp.ridge_pivots} of {mlp.index.numel()} "
                     "near-singular pivots")
    if math.isinf(mlp.shrink):
        notes.append("Type-I kept the dense down-projection rows (no more tokens than kept columns to refit)")
    if mlp.pseudo_inverse:
        notes.append("C_JJ singular even with the ridge: solved by pseudo-inverse")
    if vo.floored:
        notes.append(f"attention correlation: {vo.floored} of {d} eigenvalues raised to eig_floor "
                     f"{settings.eig_floor:g} x max")
    return notes


def solve_modegpt_layer(
    stats: dict[str, Tensor], dense: DenseLayer, plan: LayerPlan, heads: HeadLayout, settings: SolverSettings,
    layer: int | None = None,
) -> tuple[LayerSolution, dict[str, float]]:
    """Type-I (Nyström), Type-II (CR) and Type-III (SVD) for one layer; errors relative to output energy.

    Logs one line naming the safeguards that fired (dead units, rank deficiency, massive activations), if any.
    """
    tokens = float(stats["tokens"])
    mlp_corr = stats["mlp_gram"] / tokens
    attn_corr = stats["attn_gram"] / tokens

    # C W_D serves three times: the Nyström right-hand side (its rows J), the MLP output energy, and the error.
    corr_down = mlp_corr @ dense.down
    mlp = nystrom_mlp(mlp_corr, dense.down, plan.mlp_width, settings.ridge_lambda, settings.nystrom_ridge,
                      corr_w=corr_down, refit=settings.mlp_refit, tokens=tokens)
    mlp_energy = (dense.down * corr_down).sum()
    mlp_error = mlp_quadratic_error(mlp_corr, dense.down, corr_down, mlp.index, mlp.w_down) / mlp_energy

    qk_index = cr_select(stats["q_energy"], stats["k_energy"], plan.qk_dim, heads.rope)
    group = heads.group_size
    qk_dropped = _qk_score_dropped(stats["q_energy"], stats["k_energy"], qk_index, heads)

    vo = vo_svd(attn_corr, dense.v, dense.o, plan.v_dim, settings.eig_floor)
    vo_energy = head_output_energy(attn_corr, dense.v, dense.o).sum()  # Σ_h ‖C^{1/2} W_V,group(h) W_O,h‖²
    vo_error = vo_residual(attn_corr, dense.v, dense.o, vo) / max(float(vo_energy), 1e-300)

    o_bias = None
    if dense.v_bias is not None:
        base = dense.o_bias if dense.o_bias is not None else torch.zeros_like(dense.o[0, 0])
        o_bias = fold_value_bias(dense.v_bias, dense.o, base, group)
    solution = LayerSolution(
        mlp_index=mlp.index.cpu(), mlp_down=mlp.w_down.cpu(), qk_index=qk_index.cpu(),
        v_weight=vo.w_v.cpu(), o_weight=vo.w_o.cpu(), o_bias=None if o_bias is None else o_bias.cpu(),
    )
    errors = {"mlp": float(mlp_error), "qk_score_dropped": float(qk_dropped), "vo": float(vo_error)}
    notes = safeguard_notes(tokens, mlp_corr, attn_corr, mlp, vo, settings)
    if notes:
        log.info("%s: %s", "layer" if layer is None else f"layer {layer}", "; ".join(notes))
    return solution, errors


def _min_keep(full: int, max_sparsity: float) -> int:
    return max(1, math.ceil((1.0 - max_sparsity) * full))


def module_error_curves(stats: dict[str, Tensor], dense: DenseLayer, shape: BlockShape, settings: SolverSettings,
                        max_sparsity: float) -> dict[str, ModuleCurve]:
    """Each module's output error against its kept width, as a relative change of the residual stream.

    A module's error E‖e‖² (per token, the solver's own objective) is scaled by E[1/‖h‖²] of the residual stream
    it is added to, because the next norm divides by ‖h‖: the same absolute error matters less where the stream
    is large. ``settings.curve_scale="kl"`` scales by tr F at the module's output instead, F the Fisher of the
    model's own predictions there (``stats["sensitivity"]``, from the KL probe), which also sees how errors propagate
    through the layers above.
    Modules the family does not let MoDeGPT cut offer only their full width.
    """
    heads = shape.heads
    tokens = float(stats["tokens"])
    mlp_corr, attn_corr = stats["mlp_gram"] / tokens, stats["attn_gram"] / tokens
    if settings.curve_scale in PROBED_SCALES:  # the caller adds the layer's [attention, MLP] sensitivities
        attn_scale, mlp_scale = (float(s) for s in stats["sensitivity"])
    else:
        attn_scale, mlp_scale = float(stats["inv_resid_in"]) / tokens, float(stats["inv_resid_out"]) / tokens

    full_mlp = shape.intermediate_size
    corr_down = mlp_corr @ dense.down
    order = leverage_keep_order(mlp_corr, settings.ridge_lambda)
    mlp_err = nested_mlp_residuals(mlp_corr, dense.down, order, settings.nystrom_ridge, corr_w=corr_down)
    widths = torch.arange(full_mlp + 1, device=mlp_err.device)
    mlp_err = torch.where(widths % settings.round_to == 0, mlp_err, torch.full_like(mlp_err, math.inf))
    mlp_err[-1] = 0.0  # keeping everything reproduces the dense module exactly (no refit, no ridge)
    head_energy = head_output_energy(attn_corr, dense.v, dense.o)
    qk_err = qk_error_curve(stats["q_energy"] / tokens, stats["k_energy"] / tokens, head_energy, heads.rope)
    vo_err = vo_rank_residuals(attn_corr, dense.v, dense.o, settings.eig_floor)
    params = {"mlp": shape.linear_params(1, 0, 0, {}), "qk": shape.linear_params(0, 1, 0, {}),
              "vo": shape.linear_params(0, 0, 1, {})}
    curves = {}
    for name, err, scale in (("mlp", mlp_err, mlp_scale), ("qk", qk_err, attn_scale), ("vo", vo_err, attn_scale)):
        full = err.numel() - 1
        keep_min = _min_keep(full, max_sparsity) if name in shape.compressible else full
        if name == "qk" and heads.rope:
            keep_min = min(full, keep_min + keep_min % 2)
        curves[name] = ModuleCurve(error=(err * scale).cpu(), unit_params=params[name], min_keep=keep_min)
    return curves


def plan_from_curves(curves: list[dict[str, ModuleCurve]], target: float, shape: BlockShape) -> list[LayerPlan]:
    """Kept widths of every module of every layer under one budget: ``target`` of the blocks' linear weights."""
    flat = [layer[m] for layer in curves for m in MODULE_ORDER]
    budget = round(target * shape.linear_params(shape.intermediate_size, shape.heads.head_dim,
                                                shape.heads.head_dim, {}) * len(curves))
    widths = allocate_widths(flat, budget)
    dense = shape.dense_linear_params({})
    plans = []
    for i in range(len(curves)):
        mlp, qk, v = widths[3 * i : 3 * i + 3]
        sparsity = 1.0 - shape.linear_params(mlp, qk, v, {}) / dense
        plans.append(LayerPlan(sparsity=sparsity, mlp_width=mlp, qk_dim=qk, v_dim=v))
    return plans
