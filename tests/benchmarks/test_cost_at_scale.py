"""benchmarks/cost_at_scale.py's core at a tiny shape: every part is measured, positive, and in the tables."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cost(request: pytest.FixtureRequest) -> ModuleType:
    # Benchmarks import their siblings by bare name (run as scripts), so their folder goes on the path.
    sys.path.insert(0, str(REPO / "benchmarks"))
    request.addfinalizer(lambda: sys.path.remove(str(REPO / "benchmarks")))
    import cost_at_scale

    return cost_at_scale


def test_every_part_is_measured_and_tabled(cost: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    shape = cost.Shape.named("tiny")
    result = cost.measure_shape(shape, [32, 64], solve_width=shape.mlp, rate=0.25, memory_gib=8.0, stat_tokens=64,
                                log=lambda _: None)
    for seconds in result["capture"].values():
        assert seconds["capture: forward"] > 0 and seconds["capture: FP64 products"] > 0
    assert all(v > 0 for v in result["probe"].values()) and result["assembly"] > 0
    assert all(result["solve"][p] > 0 for p in ("Type-I solve", "Type-II solve", "Type-III solve",
                                               "error curves: MLP", "error curves: attention"))
    assert result["solve"]["mlp_keep"] < shape.mlp, "the tiny plan must cut the MLP, or Type-I returns early"
    rows = cost.cpu_layer_seconds(result, 0.25, None)
    for part in ("capture: forward", "capture: FP64 products", "KL probe (layers² + 2·layers passes)",
                 "error curves: MLP", "error curves: attention", "Type-I solve", "Type-II solve", "Type-III solve",
                 "weights to FP64", "assembly"):
        assert rows[part][0] > 0, part
    cost.print_tables([result], 0.25, batch=2)
    out = capsys.readouterr().out
    for part in cost.PARTS:
        assert part in out, part
    for gpu in cost.GPUS:
        assert f"| tiny | {gpu} | FP64 (as coded) |" in out


def test_probe_pass_count_matches_the_probe() -> None:
    """Block i runs the 2i perturbed streams below it, its own two perturbed passes and the clean pass."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from cost_at_scale import probe_passes
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    for layers in (1, 4, 80):
        plain, perturbed = probe_passes(layers)
        assert plain + perturbed == sum(2 * i + 3 for i in range(layers))
