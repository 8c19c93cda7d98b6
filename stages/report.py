"""Stage `report`: one Markdown table and PNG plots across every evaluated rate of a model + calibration.

Reads every ``eval/<tag>/metrics.json`` (and the dense reference) and each rate's ``solve/<tag>/plan.json``;
writes ``report/report.md``, ``perplexity_vs_rate.png``, ``zero_shot_vs_rate.png`` and ``kept_dims.png``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipeline.artifacts import (
    METRICS,
    PLAN,
    ArtifactError,
    ArtifactPaths,
    atomic_write_text,
    read_json,
    remove_stale_temps,
)
from pipeline.config import TEMPERATURE_ALLOCATIONS
from pipeline.evaluation.plots import figure, plot_vs_rate, save
from pipeline.evaluation.reporting import claim_warnings, percent_pm, ratio_pm
from pipeline.evaluation.retention import retention_figures

log = logging.getLogger(__name__)


def _rows(paths: ArtifactPaths) -> list[dict[str, Any]]:
    rows = []
    dense = paths.dense_evaluation / METRICS
    if dense.exists():
        rows.append(read_json(dense) | {"tag": DENSE, "method": DENSE, "allocation": "", "reference": True})
    for metrics in sorted(paths.evaluations.glob(f"*/{METRICS}")):  # this eval config's results
        rows.append(read_json(metrics) | {"tag": metrics.parent.name})
    return rows


DENSE = "dense"  # the label of the dense reference row


def _is_reference(row: dict[str, Any]) -> bool:
    return bool(row.get("reference"))


def _series_name(row: dict[str, Any]) -> str:
    name = f"{row['method']}-{row['allocation']}"
    return f"{name} (eps {row['temperature']:g})" if row["allocation"] in TEMPERATURE_ALLOCATIONS else name


def _task_score(entry: dict[str, Any], average_metric: str | None) -> float:
    """The per-task figure the average is made of: acc_norm where reported (unless averaging plain acc)."""
    if average_metric != "acc" and entry.get("acc_norm") is not None:
        return entry["acc_norm"]
    return entry["acc"]


def _task_stderr(entry: dict[str, Any], average_metric: str | None) -> float | None:
    if average_metric != "acc" and entry.get("acc_norm") is not None:
        return entry.get("acc_norm_stderr")
    return entry.get("acc_stderr")


def _retentions(row: dict[str, Any]) -> dict[str, Any]:
    """Both retentions of a compressed row with their ±, recomputed from the scores the row carries (a
    metrics.json written before the stderrs were recorded has the ratios only)."""
    dense = row.get("dense", {}).get("zero_shot")
    if "zero_shot" in row and dense:
        return retention_figures(row["zero_shot"], dense)
    return {k: row.get(k) for k in ("retention", "retention_stderr", "margin_retention", "margin_retention_stderr")}


def markdown_table(rows: list[dict[str, Any]]) -> str:
    zero_shot = next((r["zero_shot"] for r in rows if "zero_shot" in r), {})
    tasks = [t for t, v in zero_shot.items() if isinstance(v, dict) and "acc" in v]
    head = ["model", "target rate", "block params removed", "params", "WikiText-2 ppl", *tasks, "zero-shot avg ± se",
            "retention", "above-chance retention"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(rows, key=lambda r: (not _is_reference(r), "" if _is_reference(r) else _series_name(r),
                                         r["rate"])):
        zs = r.get("zero_shot", {})
        ret = {} if _is_reference(r) else _retentions(r)
        cells = [
            DENSE if _is_reference(r) else _series_name(r),
            f"{r['rate']:g}",
            f"{r.get('achieved_block_rate', 0.0):.1%}",
            f"{r['params'] / 1e6:.1f}M",
            f"{r['wikitext2']['perplexity']:.2f}" if "wikitext2" in r else "",
            *[percent_pm(_task_score(zs[t], zs.get("average_metric")), _task_stderr(zs[t], zs.get("average_metric")))
              if t in zs else "" for t in tasks],
            percent_pm(zs["average"], zs.get("average_stderr"), 2) if "average" in zs else "",
            *([""] * 2 if _is_reference(r) else
              [ratio_pm(ret["retention"], ret["retention_stderr"]),
               ratio_pm(ret["margin_retention"], ret["margin_retention_stderr"])]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def evaluation_extent(rows: list[dict[str, Any]]) -> str:
    """What the figures rest on: perplexity windows, items per task (of the split), and what ± and retention mean."""
    parts = []
    ppl = next((r["wikitext2"] for r in rows if "wikitext2" in r), None)
    if ppl is not None:
        parts.append(f"Perplexity over {ppl['windows']} windows of {ppl['seq_len']} tokens.")
    zs = next((r["zero_shot"] for r in rows if "zero_shot" in r), {})
    items = [f"{t} {v.get('n')}/{v.get('n_total')}" for t, v in zs.items() if isinstance(v, dict) and "acc" in v]
    if items:
        parts.append(f"Zero-shot items evaluated per task (of the split): {', '.join(items)}.")
        parts.append("± is one standard error (lm-eval's per task; the average's is sqrt(sum se²)/n). Above-chance "
                     "retention is the mean over tasks of (acc − chance) / (dense acc − chance). Each retention's ± "
                     "is propagated from the two averages' (compressed and dense taken as independent).")
    return " ".join(parts)


def claim_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The report's warnings, in words, where its figures rest on too few items or windows (each said once)."""
    return list(dict.fromkeys(w for r in rows for w in claim_warnings(r)))


def _plot_vs_rate(rows: list[dict[str, Any]], value, ylabel: str, out: Path, log_y: bool = False) -> None:
    dense = [r for r in rows if _is_reference(r) and value(r) is not None]
    series: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        if not _is_reference(r) and value(r) is not None:
            series.setdefault(_series_name(r), []).append((r["rate"], value(r)))
    plot_vs_rate(series, ylabel, out, reference=value(dense[0]) if dense else None, log_y=log_y)


def _plot_kept_dims(paths: ArtifactPaths, rows: list[dict[str, Any]], out: Path) -> None:
    fig, axes = figure(3, (13, 3.8), sharey=True)
    for r in sorted((r for r in rows if not _is_reference(r)), key=lambda r: (_series_name(r), r["rate"])):
        plan_path = paths.solves / r["tag"] / PLAN
        if not plan_path.exists():
            continue
        plan = read_json(plan_path)
        layers, dense = plan["layers"], plan["dense"]
        for ax, key in zip(axes, ("mlp_width", "qk_dim", "v_dim"), strict=True):
            label = f"{_series_name(r)} r={r['rate']:g}"
            ax.plot(range(len(layers)), [p[key] / dense[key] for p in layers], marker=".", label=label)
            ax.set_title(f"kept {key} per layer (of {dense[key]})")
            ax.set_xlabel("layer")
            ax.set_ylim(0, 1.05)
    axes[0].set_ylabel("fraction of the dense dimension kept")
    if axes[-1].get_legend_handles_labels()[0]:  # rows without a plan on disk draw nothing to label
        axes[-1].legend(fontsize=7)
    save(fig, out)


def run(cfg: Any) -> Path:
    paths = ArtifactPaths(cfg)
    rows = _rows(paths)
    if not any(not _is_reference(r) for r in rows):
        raise ArtifactError(f"no evaluated compressed model under {paths.run_root}: "
                            "run `modegpt evaluate` first")
    out = paths.report
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)  # a report killed mid-write (tests/stages/test_soak.py found one) is rewritten whole

    def ppl(r: dict[str, Any]) -> float | None:
        return r["wikitext2"]["perplexity"] if "wikitext2" in r else None

    def avg(r: dict[str, Any]) -> float | None:
        return 100 * r["zero_shot"]["average"] if "zero_shot" in r else None

    _plot_vs_rate(rows, ppl, "WikiText-2 perplexity", out / "perplexity_vs_rate.png", log_y=True)
    _plot_vs_rate(rows, avg, "zero-shot average accuracy (%)", out / "zero_shot_vs_rate.png")
    _plot_kept_dims(paths, rows, out / "kept_dims.png")
    source = next((r["wikitext2"]["source"] for r in rows if "wikitext2" in r), "n/a")
    settings = next((r["zero_shot"].get("settings") for r in rows if "zero_shot" in r), None)
    warnings = claim_lines(rows)
    for warning in warnings:
        log.warning("%s", warning)
    text = (f"# MoDeGPT report: {cfg.model.name}, calibration {paths.calibration_key}\n\n"
            + "".join(f"**{w}**\n\n" for w in warnings)
            + f"{markdown_table(rows)}\n{evaluation_extent(rows)}\n\n"
            f"Perplexity: {source}. Zero-shot settings: {settings}.\n\n"
            "![perplexity](perplexity_vs_rate.png)\n![zero-shot](zero_shot_vs_rate.png)\n![kept](kept_dims.png)\n")
    atomic_write_text(out / "report.md", text)
    log.info("report written to %s", out / "report.md")
    print(markdown_table(rows) + "".join(f"\n{w}" for w in warnings))
    return out
