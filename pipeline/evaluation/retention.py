"""How much of the dense model's zero-shot accuracy a compressed model keeps: plain and above-chance retention.

Small models sit near chance on some tasks (SmolLM2-135M's ARC-Challenge acc_norm is ~28% where chance is 25%),
so plain retention (compressed average / dense average) flatters them: a model that guesses keeps ~90% of
28%. Margin retention compares only what lies above chance: mean over tasks of
(acc - chance) / (dense acc - chance).
"""

from __future__ import annotations

import math
from typing import Any

# Expected accuracy of a uniform guess on each task's evaluated split: the mean over items of 1 / (choices of the
# item). ARC has a few 3- and 5-choice items (arc_easy: 2365 x 4, 7 x 3, 4 x 5; arc_challenge: 1165 x 4, 4 x 3,
# 3 x 5), computed over the whole split (a test recomputes these from the offline data); a --limit prefix differs
# from these by < 0.001. LAMBADA scores an exact next-word match out of the whole vocabulary: chance ~ 0.
CHANCE: dict[str, float] = {
    "piqa": 0.5, "winogrande": 0.5, "boolq": 0.5, "hellaswag": 0.25, "openbookqa": 0.25,
    "arc_easy": 0.2501613, "arc_challenge": 0.2501564, "lambada_openai": 0.0,
}


def average_stderr(stderrs: list[float | None]) -> float | None:
    """Standard error of a mean of independent task scores: sqrt(sum se_i^2) / n (None if any is unknown)."""
    if not stderrs or any(se is None for se in stderrs):
        return None
    return math.sqrt(sum(se * se for se in stderrs)) / len(stderrs)  # type: ignore[operator]


def margin_retention(scores: dict[str, float], dense_scores: dict[str, float]) -> dict[str, Any]:
    """Mean over tasks of (score - chance) / (dense score - chance), with each task's ratio.

    A task on which the dense model is not above chance has no margin to retain: it is left out of the mean and
    listed under ``excluded`` (the mean is None when every task is excluded).
    """
    per_task: dict[str, float] = {}
    excluded: list[str] = []
    for task, score in scores.items():
        if task not in dense_scores:
            continue
        chance = CHANCE.get(task)
        if chance is None or dense_scores[task] - chance <= 0:
            excluded.append(task)
            continue
        per_task[task] = (score - chance) / (dense_scores[task] - chance)
    mean = sum(per_task.values()) / len(per_task) if per_task else None
    return {"mean": mean, "per_task": per_task, "excluded": excluded, "chance": {t: CHANCE.get(t) for t in scores}}
