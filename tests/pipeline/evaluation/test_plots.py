"""Result plots: a PNG per call, written atomically, whatever the order of the points."""

from pathlib import Path

from pipeline.evaluation.plots import plot_vs_rate

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_plot_vs_rate_writes_one_png_and_no_temp_file(tmp_path: Path) -> None:
    out = tmp_path / "ppl.png"
    series = {"modegpt": [(0.3, 43.7), (0.1, 25.7), (0.2, 31.9)], "paper": [(0.1, 27.9), (0.3, 62.5)]}
    plot_vs_rate(series, "WikiText-2 perplexity", out, reference=21.6, log_y=True, title="t")
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert [p.name for p in tmp_path.iterdir()] == ["ppl.png"]
