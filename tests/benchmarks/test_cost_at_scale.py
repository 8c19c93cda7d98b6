"""benchmarks/cost_at_scale.py's core at a tiny shape: every part is measured, positive, and in the tables; the
probe's work model is the block-wise backward of PROBE_VERSION 4."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cost(request: pytest.FixtureRequest) -> SimpleNamespace:
    # Benchmarks import their siblings by bare name (run as scripts), so their folder goes on the path.
    sys.path.insert(0, str(REPO / "benchmarks"))
    request.addfinalizer(lambda: sys.path.remove(str(REPO / "benchmarks")))
    import cost_at_scale
    import cost_model
    import cost_tables

    # the three modules' names in one place (the measuring script, its formulas and its tables)
    return SimpleNamespace(**{**vars(cost_model), **vars(cost_tables), **vars(cost_at_scale)})


def test_every_part_is_measured_and_tabled(cost: SimpleNamespace, capsys: pytest.CaptureFixture[str]) -> None:
    shape = cost.Shape.named("tiny")
    result = cost.measure_shape(shape, [32, 64], solve_width=shape.mlp, rate=0.25, memory_gib=8.0, stat_tokens=64,
                                log=lambda _: None)
    for seconds in result["capture"].values():
        assert seconds["capture: forward"] > 0 and seconds["capture: FP64 products"] > 0
    assert all(result["probe"][p] > 0 for p in (*cost.PROBE_PARTS, "Fisher probe: real one-block batch"))
    assert result["probe"]["dtype"] == "float32" and result["assembly"] > 0
    assert all(result["solve"][p] > 0 for p in ("Type-I solve", "Type-II solve", "Type-III solve",
                                               "error curves: MLP", "error curves: attention"))
    assert result["solve"]["mlp_keep"] < shape.mlp, "the tiny plan must cut the MLP, or Type-I returns early"
    rows = cost.cpu_layer_seconds(result, 0.25, None)
    for part in ("capture: forward", "capture: FP64 products", cost.PROBE_BLOCKS, cost.PROBE_HEAD,
                 "error curves: MLP", "error curves: attention", "Type-I solve", "Type-II solve", "Type-III solve",
                 "weights to FP64", "assembly"):
        assert rows[part][0] > 0, part
    cost.print_tables([result], 0.25, batch=2)
    out = capsys.readouterr().out
    for part in ("capture: forward", "capture: FP64 products", *cost.PROBE_PARTS, *cost.SOLVE_PARTS, "assembly",
                 "Fisher probe: blocks", "Fisher probe: head", "Fisher probe peak"):
        assert part in out, part
    for gpu in cost.GPUS:
        assert f"| tiny | {gpu} | FP64 (as coded) |" in out


def test_probe_flops_follow_the_block_wise_backward(cost: SimpleNamespace) -> None:
    """Per block the probe runs a forward, a recomputed forward and a backward to inputs only (1× the linears, 2×
    attention); its tokens are PROBE_SEQUENCES × PROBE_POSITIONS from pipeline.solve_identity, for any layer count."""
    from pipeline.solve_identity import PROBE_POSITIONS, PROBE_SEQUENCES

    s = cost.Shape.named("llama3-8b")
    forward = cost.forward_flops(s, PROBE_SEQUENCES, PROBE_POSITIONS)
    attention = cost.attention_flops(s, PROBE_SEQUENCES, PROBE_POSITIONS)
    assert cost.probe_block_flops(s) == 3 * forward + attention
    work = cost.gpu_flops(s, 0.25)
    assert work["Fisher probe: blocks"]["bf16"] == s.layers * cost.probe_block_flops(s)
    assert work["Fisher probe: head"]["bf16"] == PROBE_SEQUENCES * PROBE_POSITIONS * 4 * s.hidden * s.vocab
    deeper = cost.Shape(**{**vars(s), "layers": 2 * s.layers})
    assert cost.gpu_flops(deeper, 0.25)["Fisher probe: blocks"]["bf16"] == 2 * work["Fisher probe: blocks"]["bf16"]
