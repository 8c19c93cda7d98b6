"""How figures are shown to a reader: each with its ±, and in words whether the evaluation can carry a claim.

The project's rule: a zero-shot claim needs at least 500 items per task, a perplexity claim at least 32 windows.
The quick default evaluation (`eval=default`: 40 items, 8 windows) is far below both; its figures are fine for
seeing that a run works, but a difference between two of them is mostly noise, and a reader of the report has
to be told so in the report itself rather than work it out from the ± alone.
"""

from __future__ import annotations

from typing import Any

MIN_ZERO_SHOT_ITEMS = 500  # per task
MIN_PERPLEXITY_WINDOWS = 32


def percent_pm(value: float, stderr: float | None, digits: int = 1) -> str:
    """A fraction as a percentage with its standard error ("61.2 ± 1.1"), or alone when it has none."""
    return f"{100 * value:.{digits}f}" + ("" if stderr is None else f" ± {100 * stderr:.{digits}f}")


def ratio_pm(value: float | None, stderr: float | None) -> str:
    """A ratio as a percentage with its propagated standard error ("104.2 ± 10.3%"), or alone when it has none."""
    if value is None:
        return ""
    return f"{value:.1%}" if stderr is None else f"{100 * value:.1f} ± {100 * stderr:.1f}%"


def items_per_task(zero_shot: dict[str, Any]) -> dict[str, tuple[int | None, int | None]]:
    """task -> (items evaluated, items in the split) of a ``summarize`` dict."""
    return {t: (v.get("n"), v.get("n_total")) for t, v in zero_shot.items() if isinstance(v, dict) and "acc" in v}


def zero_shot_warning(zero_shot: dict[str, Any]) -> str | None:
    """The sentence saying the zero-shot figures rest on too few items, or None when they are enough.

    The rule holds even for a whole split smaller than 500 (its figures are no steadier for being complete); a
    task whose count lm-eval did not report is not judged.
    """
    short = [n for n, _ in items_per_task(zero_shot).values() if n is not None and n < MIN_ZERO_SHOT_ITEMS]
    if not short:
        return None
    counts = {n for n, _ in items_per_task(zero_shot).values() if n is not None}
    fewest = min(short)
    amount = f"{fewest} items per task" if len(counts) == 1 else f"as few as {fewest} items per task"
    return f"{amount}: too few to carry a claim (≥ {MIN_ZERO_SHOT_ITEMS} needed); the ± show why."


def perplexity_warning(wikitext2: dict[str, Any]) -> str | None:
    """The sentence saying the perplexity rests on too few windows, or None when it is enough."""
    windows = wikitext2.get("windows")
    if windows is None or windows >= MIN_PERPLEXITY_WINDOWS:
        return None
    return (f"{windows} perplexity windows: too few to carry a claim (≥ {MIN_PERPLEXITY_WINDOWS} needed); "
            "differences between rows are mostly noise.")


def claim_warnings(metrics: dict[str, Any]) -> list[str]:
    """Every warning for one model's metrics (``wikitext2`` and ``zero_shot`` keys, either may be absent)."""
    found = [perplexity_warning(metrics["wikitext2"]) if "wikitext2" in metrics else None,
             zero_shot_warning(metrics["zero_shot"]) if metrics.get("zero_shot") else None]
    return [w for w in found if w is not None]
