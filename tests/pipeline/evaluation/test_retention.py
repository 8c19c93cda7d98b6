"""Above-chance (margin) retention and the chance levels it uses."""

from __future__ import annotations

import pytest

from pipeline.evaluation.offline_data import task_rows
from pipeline.evaluation.retention import CHANCE, average_stderr, margin_retention


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
