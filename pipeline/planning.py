"""The per-layer size plan every method shares: each layer's sparsity from a rule (Block Influence or uniform) or
one budget over module error curves, turned into kept widths that meet the target rate.

Plain arithmetic on block shapes; no method's math and no weights. ``Method.plan`` (``pipeline.methods``) picks
which of these a configuration asks for.
"""

from __future__ import annotations

import dataclasses
import math

from torch import Tensor

from pipeline.adapters import BlockShape
from pipeline.modegpt import ModuleCurve, allocate_widths, bi_sparsity, kept_dim, uniform_sparsity
from pipeline.plan import LayerPlan

MODULE_ORDER = ("mlp", "qk", "vo")  # the order of a layer's widths in LayerPlan


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
