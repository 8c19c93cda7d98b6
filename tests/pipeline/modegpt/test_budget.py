"""One budget across modules: the Lagrangian allocation against brute force, and its budget bookkeeping."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from pipeline.modegpt import ModuleCurve, allocate_widths

F64 = torch.float64


def _convex_curve(full: int, scale: float, power: float) -> torch.Tensor:
    widths = torch.arange(full + 1, dtype=F64)
    return scale * (1.0 - widths / full) ** power


def _removed(curves: list[ModuleCurve], widths: list[int]) -> int:
    return sum((c.full - k) * c.unit_params for c, k in zip(curves, widths, strict=True))


def test_meets_the_budget_at_the_least_error_on_convex_curves() -> None:
    curves = [ModuleCurve(_convex_curve(6, 1.0, 2.0), 3), ModuleCurve(_convex_curve(4, 5.0, 1.5), 5),
              ModuleCurve(_convex_curve(8, 0.2, 3.0), 2)]
    for target in (0, 7, 20, 31, 44):
        widths = allocate_widths(curves, target)
        removed = _removed(curves, widths)
        assert removed >= target
        error = sum(float(c.error[k]) for c, k in zip(curves, widths, strict=True))
        options = [
            (sum(float(c.error[k]) for c, k in zip(curves, ws, strict=True)), _removed(curves, ws))
            for ws in itertools.product(*(range(c.full + 1) for c in curves))
        ]
        best = min(e for e, r in options if r >= target)
        # Exact on the convex hull; at most one hull step of slack otherwise (here the curves are convex).
        assert error <= best + 0.35 * max(float(c.error[0]) for c in curves)
        assert removed - target < max(c.unit_params * c.full for c in curves)


def test_cheap_modules_are_cut_first() -> None:
    flat = ModuleCurve(torch.tensor([1e-6, 1e-7, 0.0], dtype=F64), 10, min_keep=0)
    steep = ModuleCurve(torch.tensor([10.0, 1.0, 0.0], dtype=F64), 10)
    assert allocate_widths([flat, steep], 20) == [0, 2]


def test_disallowed_widths_and_floors_are_respected() -> None:
    rope_like = ModuleCurve(torch.tensor([4.0, math.inf, 1.0, math.inf, 0.0], dtype=F64), 1, min_keep=2)
    other = ModuleCurve(_convex_curve(4, 100.0, 1.0), 1)
    widths = allocate_widths([rope_like, other], 2)
    assert widths[0] in (2, 4)
    with pytest.raises(ValueError, match="cannot remove"):
        allocate_widths([rope_like], 3)


def test_zero_budget_keeps_everything() -> None:
    assert allocate_widths([ModuleCurve(_convex_curve(5, 1.0, 1.0), 1)], 0) == [5]
