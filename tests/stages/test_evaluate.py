"""Evaluate stage on a tiny model: perplexity + a few local zero-shot items, dense reference, retention."""

import json
import math

import pytest
from conftest import compose_config, tiny_overrides

from pipeline.artifacts import ArtifactError, ArtifactPaths, read_manifest
from stages import assemble, capture, evaluate, solve, tokenize


@pytest.mark.parametrize("family", ["llama"])
def test_metrics_for_dense_and_compressed(tmp_path, tiny_model_dirs, family) -> None:
    overrides = [*tiny_overrides(tmp_path, tiny_model_dirs[family], family), "eval.limit=3",
                 "eval.tasks=[piqa,arc_easy]", "eval.perplexity_max_windows=2", "compression.rate=0.3"]
    cfg = compose_config(overrides)
    with pytest.raises(ArtifactError, match="compressed checkpoint not found"):
        evaluate.run(cfg)
    for stage in (tokenize, capture, solve, assemble):
        stage.run(cfg)
    target = evaluate.run(cfg)
    metrics = json.loads((target / evaluate.METRICS).read_text())
    dense = json.loads((ArtifactPaths(cfg).dense_evaluation / evaluate.METRICS).read_text())
    for m in (metrics, dense):
        assert m["wikitext2"]["windows"] == 2 and m["wikitext2"]["seq_len"] == 64
        assert math.isfinite(m["wikitext2"]["perplexity"]) and m["wikitext2"]["perplexity"] > 1
        assert set(m["zero_shot"]) >= {"piqa", "arc_easy", "average"}
        assert 0.0 <= m["zero_shot"]["average"] <= 1.0
        assert m["zero_shot"]["piqa"]["n"] == 3
    assert metrics["compressed"] and metrics["params"] < dense["params"]
    assert metrics["retention"] == pytest.approx(metrics["zero_shot"]["average"] / dense["zero_shot"]["average"])
    assert metrics["perplexity_ratio"] == pytest.approx(
        metrics["wikitext2"]["perplexity"] / dense["wikitext2"]["perplexity"])
    stamp = (target / "manifest.json").stat().st_mtime_ns
    evaluate.run(cfg)  # current: reused
    assert (target / "manifest.json").stat().st_mtime_ns == stamp
    assert read_manifest(target).config["limit"] == 3
