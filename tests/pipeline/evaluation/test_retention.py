"""Above-chance (margin) retention and the chance levels it uses."""

from __future__ import annotations

import math

import pytest

from pipeline.evaluation.offline_data import task_rows
from pipeline.evaluation.retention import (
    CHANCE,
    average_stderr,
    margin_retention,
    ratio_stderr,
    retention,
    retention_figures,
)


def test_margin_retention_measures_only_what_lies_above_chance() -> None:
    dense = {"piqa": 0.7, "arc_challenge": 0.28, "hellaswag": 0.24}
    compressed = {"piqa": 0.6, "arc_challenge": 0.26, "hellaswag": 0.25}
    out = margin_retention(compressed, dense)
    assert out["per_task"]["piqa"] == pytest.approx(0.1 / 0.2)
    assert out["per_task"]["arc_challenge"] == pytest.approx((0.26 - CHANCE["arc_challenge"])
                                                             / (0.28 - CHANCE["arc_challenge"]))
    assert out["excluded"] == ["hellaswag"]  # the dense model is at chance: no margin to keep
    assert out["mean"] == pytest.approx((out["per_task"]["piqa"] + out["per_task"]["arc_challenge"]) / 2)
    assert margin_retention(dense, dense)["mean"] == pytest.approx(1.0)
    assert margin_retention({"hellaswag": 0.2}, {"hellaswag": 0.2})["mean"] is None


def test_retention_stderr_is_propagated_from_both_averages() -> None:
    # The default run's quick evaluation: 49.50 ± 3.53 against dense 47.50 ± 3.46.
    out = retention(0.4950, 0.0353, 0.4750, 0.0346)
    r = 0.4950 / 0.4750
    assert out["value"] == pytest.approx(r)
    assert out["stderr"] == pytest.approx(r * math.sqrt((0.0353 / 0.4950) ** 2 + (0.0346 / 0.4750) ** 2))
    assert out["stderr"] == pytest.approx(0.1062, abs=5e-5)  # 104.2 ± 10.6%: the ± spans 100%
    assert ratio_stderr(0.0, 0.01, 0.5, 0.02) == pytest.approx(0.01 / 0.5)  # a = 0 needs no special case
    assert ratio_stderr(0.5, None, 0.5, 0.02) is None and retention(0.5, 0.01, 0.5, None)["stderr"] is None


def test_margin_retention_stderr_propagates_the_shifted_scores() -> None:
    dense, compressed = {"piqa": 0.7, "hellaswag": 0.45}, {"piqa": 0.66, "hellaswag": 0.40}
    dense_se, se = {"piqa": 0.02, "hellaswag": 0.03}, {"piqa": 0.025, "hellaswag": 0.035}
    out = margin_retention(compressed, dense, se, dense_se)
    expected = {}
    for task in dense:
        a, b = compressed[task] - CHANCE[task], dense[task] - CHANCE[task]  # chance is exact: se unchanged
        expected[task] = (a / b) * math.sqrt((se[task] / a) ** 2 + (dense_se[task] / b) ** 2)
        assert out["per_task_stderr"][task] == pytest.approx(expected[task])
    assert out["stderr"] == pytest.approx(math.sqrt(sum(v * v for v in expected.values())) / 2)
    assert margin_retention(compressed, dense, {"piqa": 0.02}, dense_se)["stderr"] is None  # one se unknown
    assert margin_retention(compressed, dense)["stderr"] is None


def test_retention_figures_of_summaries() -> None:
    def summary(piqa: float, piqa_se: float, hs: float, hs_se: float) -> dict:
        tasks = {"piqa": {"acc": piqa, "acc_stderr": piqa_se, "n": 40},
                 "hellaswag": {"acc": hs - 0.05, "acc_stderr": 0.1, "acc_norm": hs, "acc_norm_stderr": hs_se, "n": 40}}
        return tasks | {"average": (piqa + hs) / 2, "average_stderr": average_stderr([piqa_se, hs_se]),
                        "average_metric": "acc_norm_if_present"}

    compressed, dense = summary(0.6, 0.07, 0.35, 0.075), summary(0.65, 0.075, 0.4, 0.077)
    out = retention_figures(compressed, dense)
    assert out["retention"] == pytest.approx(compressed["average"] / dense["average"])
    assert out["retention_stderr"] == pytest.approx(
        retention(compressed["average"], compressed["average_stderr"], dense["average"],
                  dense["average_stderr"])["stderr"])
    # hellaswag is scored by acc_norm, so its ratio and ± are acc_norm's
    margin = margin_retention({"piqa": 0.6, "hellaswag": 0.35}, {"piqa": 0.65, "hellaswag": 0.4},
                              {"piqa": 0.07, "hellaswag": 0.075}, {"piqa": 0.075, "hellaswag": 0.077})
    assert out["margin_retention"] == pytest.approx(margin["mean"])
    assert out["margin_retention_stderr"] == pytest.approx(margin["stderr"])


def test_average_stderr() -> None:
    assert average_stderr([0.03, 0.04]) == pytest.approx(0.025)
    assert average_stderr([0.03, None]) is None and average_stderr([]) is None


@pytest.mark.parametrize("task", ["arc_easy", "arc_challenge", "openbookqa", "piqa", "winogrande", "boolq"])
def test_chance_levels_match_the_number_of_choices_in_the_data(task: str) -> None:
    rows = task_rows(task)
    if "choices" in rows[0]:
        counts = [len(r["choices"]["text"]) for r in rows]
    else:  # piqa (sol1/sol2), winogrande (option1/option2), boolq (yes/no)
        counts = [2] * len(rows)
    assert CHANCE[task] == pytest.approx(sum(1 / n for n in counts) / len(counts), abs=1e-6)
