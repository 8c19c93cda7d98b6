"""The words a reader gets beside the figures: ± formatting, and when an evaluation is too small for a claim."""

from __future__ import annotations

from pipeline.evaluation.reporting import (
    MIN_PERPLEXITY_WINDOWS,
    MIN_ZERO_SHOT_ITEMS,
    claim_warnings,
    percent_pm,
    perplexity_warning,
    ratio_pm,
    zero_shot_warning,
)


def _zero_shot(*items: int) -> dict:
    tasks = {f"task{i}": {"acc": 0.5, "acc_stderr": 0.05, "n": n, "n_total": 2000} for i, n in enumerate(items)}
    return tasks | {"average": 0.5, "average_stderr": 0.03, "average_metric": "acc_norm_if_present"}


def test_ratio_and_percent_carry_their_stderr() -> None:
    assert ratio_pm(0.4950 / 0.4750, 0.10623) == "104.2 ± 10.6%"
    assert ratio_pm(0.923, None) == "92.3%" and ratio_pm(None, 0.1) == ""
    assert percent_pm(0.495, 0.0353, 2) == "49.50 ± 3.53" and percent_pm(0.6, None) == "60.0"


def test_the_default_quick_evaluation_is_said_to_carry_no_claim() -> None:
    assert MIN_ZERO_SHOT_ITEMS == 500 and MIN_PERPLEXITY_WINDOWS == 32  # the project's rule
    assert zero_shot_warning(_zero_shot(40, 40, 40)) == \
        "40 items per task: too few to carry a claim (≥ 500 needed); the ± show why."
    assert zero_shot_warning(_zero_shot(500, 40, 1000)) == \
        "as few as 40 items per task: too few to carry a claim (≥ 500 needed); the ± show why."
    assert perplexity_warning({"windows": 8}) == \
        "8 perplexity windows: too few to carry a claim (≥ 32 needed); differences between rows are mostly noise."
    assert claim_warnings({"wikitext2": {"windows": 8}, "zero_shot": _zero_shot(40)}) == [
        perplexity_warning({"windows": 8}), zero_shot_warning(_zero_shot(40))]


def test_enough_items_and_windows_need_no_warning() -> None:
    assert zero_shot_warning(_zero_shot(500, 1838)) is None
    assert perplexity_warning({"windows": 32}) is None
    assert claim_warnings({"wikitext2": {"windows": 140}, "zero_shot": _zero_shot(500)}) == []
    assert claim_warnings({}) == [] and claim_warnings({"zero_shot": None}) == []
    assert zero_shot_warning(_zero_shot() | {"piqa": {"acc": 0.5, "n": None}}) is None  # count unknown: not judged
