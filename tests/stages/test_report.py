"""The report's table: every zero-shot figure with its standard error, both retentions, and what they rest on."""

import math

import pytest

from pipeline.evaluation.retention import CHANCE
from stages import report
from stages.report import claim_lines, evaluation_extent, markdown_table


def _row(method: str, rate: float, avg: float, n: int = 500, windows: int = 32, **extra) -> dict:
    task = {"acc": avg - 0.01, "acc_stderr": 0.02, "acc_norm": avg, "acc_norm_stderr": 0.015, "n": n,
            "n_total": 1838}
    zs = {"piqa": task, "average": avg, "average_stderr": 0.015, "average_metric": "acc_norm_if_present"}
    return {"method": method, "allocation": "bi", "temperature": 0.1, "rate": rate, "params": 100e6,
            "wikitext2": {"perplexity": 20.0, "windows": windows, "seq_len": 2048, "source": "local"},
            "zero_shot": zs, **extra}


def _pair(n: int = 500, windows: int = 32) -> list[dict]:
    dense = _row("dense", 0.0, 0.65, n, windows, reference=True)
    compressed = _row("modegpt", 0.25, 0.6, n, windows, retention=0.6 / 0.65, margin_retention=0.1 / 0.15)
    return [dense, compressed | {"tag": "r0.25", "dense": {"zero_shot": dense["zero_shot"]}}]


def test_table_shows_stderr_and_both_retentions_with_theirs() -> None:
    table = markdown_table(_pair())
    assert "zero-shot avg ± se" in table and "above-chance retention" in table
    r = 0.6 / 0.65
    se = r * math.sqrt((0.015 / 0.6) ** 2 + (0.015 / 0.65) ** 2)  # both averages' se are 0.015
    a, b = 0.6 - CHANCE["piqa"], 0.65 - CHANCE["piqa"]
    margin_se = (a / b) * math.sqrt((0.015 / a) ** 2 + (0.015 / b) ** 2)  # one task: the mean's se is its own
    assert f"{100 * se:.1f}" == "3.1" and f"{100 * margin_se:.1f}" == "12.0"
    assert "| 60.0 ± 1.5 | 60.00 ± 1.50 | 92.3 ± 3.1% | 66.7 ± 12.0% |" in table
    extent = evaluation_extent(_pair())
    assert "32 windows of 2048" in extent and "piqa 500/1838" in extent and "propagated" in extent


def test_old_metrics_without_the_dense_scores_keep_their_plain_ratios() -> None:
    dense, compressed = _pair()
    del compressed["dense"]
    assert "| 92.3% | 66.7% |" in markdown_table([dense, compressed])


def test_report_says_when_its_items_are_too_few(tmp_path, monkeypatch, capsys) -> None:
    assert claim_lines(_pair()) == []
    assert claim_lines(_pair(n=40, windows=8)) == [
        "8 perplexity windows: too few to carry a claim (≥ 32 needed); differences between rows are mostly noise.",
        "40 items per task: too few to carry a claim (≥ 500 needed); the ± show why.",
    ]

    class Paths:  # the report's inputs without a pipeline run: two rows, no plans
        report = tmp_path / "report"
        run_root = tmp_path
        solves = tmp_path / "solve"
        calibration_key = "boolq-32x512-seed0"

    monkeypatch.setattr(report, "ArtifactPaths", lambda cfg: Paths)
    monkeypatch.setattr(report, "_rows", lambda paths: _pair(n=40, windows=8))

    class Cfg:
        class model:  # noqa: N801 - stands in for cfg.model
            name = "tiny"

    out = report.run(Cfg)
    text = (out / "report.md").read_text(encoding="utf-8")
    assert "**40 items per task: too few to carry a claim (≥ 500 needed); the ± show why.**" in text
    assert "**8 perplexity windows: too few" in text
    assert text.index("too few") < text.index("| model |")  # said before the table, not after it
    assert "40 items per task: too few to carry a claim" in capsys.readouterr().out


@pytest.mark.parametrize("n", [500, 1000])
def test_enough_items_are_not_warned_about(n: int) -> None:
    assert claim_lines(_pair(n=n, windows=32)) == []
