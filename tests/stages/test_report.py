"""The report's table: every zero-shot figure with its standard error, both retentions, and what they rest on."""

from stages.report import evaluation_extent, markdown_table


def _row(method: str, rate: float, avg: float, **extra) -> dict:
    task = {"acc": avg - 0.01, "acc_stderr": 0.02, "acc_norm": avg, "acc_norm_stderr": 0.015, "n": 500,
            "n_total": 1838}
    zs = {"piqa": task, "average": avg, "average_stderr": 0.015, "average_metric": "acc_norm_if_present"}
    return {"method": method, "allocation": "bi", "temperature": 0.1, "rate": rate, "params": 100e6,
            "wikitext2": {"perplexity": 20.0, "windows": 32, "seq_len": 2048}, "zero_shot": zs, **extra}


def test_table_shows_stderr_and_both_retentions() -> None:
    rows = [_row("dense", 0.0, 0.65), _row("modegpt", 0.25, 0.6, retention=0.6 / 0.65, margin_retention=0.1 / 0.15)]
    table = markdown_table(rows)
    assert "zero-shot avg ± se" in table and "above-chance retention" in table
    assert "| 60.0 ± 1.5 | 60.00 ± 1.50 | 92.3% | 66.7% |" in table
    extent = evaluation_extent(rows)
    assert "32 windows of 2048" in extent and "piqa 500/1838" in extent
