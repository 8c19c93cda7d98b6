"""Evaluate stage on a tiny model: perplexity + a few local zero-shot items, dense reference, retention."""

import json
import math

import pytest
from conftest import compose_config, tiny_overrides

from pipeline.artifacts import METRICS, ArtifactError, ArtifactPaths, read_manifest
from stages import assemble, capture, evaluate, solve, tokenize


@pytest.mark.parametrize("family", ["llama"])
def test_metrics_for_dense_and_compressed(tmp_path, tiny_model_dirs, family, caplog) -> None:
    overrides = [*tiny_overrides(tmp_path, tiny_model_dirs[family], family), "eval.limit=3",
                 "eval.tasks=[piqa,arc_easy]", "eval.perplexity_max_windows=2", "compression.rate=0.3"]
    cfg = compose_config(overrides)
    with pytest.raises(ArtifactError, match="compressed checkpoint not found"):
        evaluate.run(cfg)
    for stage in (tokenize, capture, solve, assemble):
        stage.run(cfg)
    with caplog.at_level("INFO", logger="stages.evaluate"):
        target = evaluate.run(cfg)
    metrics = json.loads((target / METRICS).read_text())
    dense = json.loads((ArtifactPaths(cfg).dense_evaluation / METRICS).read_text())
    for m in (metrics, dense):
        assert m["wikitext2"]["windows"] == 2 and m["wikitext2"]["seq_len"] == 64
        assert math.isfinite(m["wikitext2"]["perplexity"]) and m["wikitext2"]["perplexity"] > 1
        assert set(m["zero_shot"]) >= {"piqa", "arc_easy", "average"}
        assert 0.0 <= m["zero_shot"]["average"] <= 1.0
        assert m["zero_shot"]["piqa"]["n"] == 3
    assert metrics["compressed"] and metrics["params"] < dense["params"]
    assert metrics["retention"] == pytest.approx(metrics["zero_shot"]["average"] / dense["zero_shot"]["average"])
    assert metrics["margin_retention"] == metrics["margin_retention_detail"]["mean"]
    assert set(metrics["margin_retention_detail"]["per_task"]) | set(metrics["margin_retention_detail"]["excluded"]) \
        == {"piqa", "arc_easy"}
    assert metrics["zero_shot"]["average_stderr"] is not None
    assert metrics["retention_stderr"] is not None
    assert metrics["margin_retention_stderr"] == metrics["margin_retention_detail"]["stderr"]
    logged = caplog.text
    assert f"zero-shot retention {100 * metrics['retention']:.1f} ± {100 * metrics['retention_stderr']:.1f}%" in logged
    assert "3 items per task: too few to carry a claim (≥ 500 needed); the ± show why." in logged
    assert "2 perplexity windows: too few to carry a claim (≥ 32 needed)" in logged
    assert metrics["perplexity_ratio"] == pytest.approx(
        metrics["wikitext2"]["perplexity"] / dense["wikitext2"]["perplexity"])
    stamp = (target / "manifest.json").stat().st_mtime_ns
    evaluate.run(cfg)  # current: reused
    assert (target / "manifest.json").stat().st_mtime_ns == stamp
    assert read_manifest(target).config["limit"] == 3


def test_eval_configs_live_side_by_side(tmp_path, tiny_model_dirs) -> None:
    base = tiny_overrides(tmp_path, tiny_model_dirs["opt"], "opt")
    quick = ArtifactPaths(compose_config([*base, "eval.limit=3"]))
    full = ArtifactPaths(compose_config([*base, "eval.limit=null"]))
    assert quick.dense_evaluation != full.dense_evaluation and quick.evaluation() != full.evaluation()
    assert quick.evaluation().name == full.evaluation().name  # same compressed model, another eval config


def test_prepare_records_a_hub_or_local_model(tmp_path, tiny_model_dirs) -> None:
    from stages import prepare

    cfg = compose_config(tiny_overrides(tmp_path, tiny_model_dirs["llama"], "llama"))
    target = prepare.run(cfg)
    assert read_manifest(target).inputs["model"] and read_manifest(target).status == "complete"
