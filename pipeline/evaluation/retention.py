"""How much of the dense model's zero-shot accuracy a compressed model keeps: plain and above-chance retention.

Small models sit near chance on some tasks (SmolLM2-135M's ARC-Challenge acc_norm is ~28% where chance is 25%),
so plain retention (compressed average / dense average) flatters them: a model that guesses keeps ~90% of
28%. Margin retention compares only what lies above chance: mean over tasks of
(acc - chance) / (dense acc - chance).

Both are ratios of two noisy averages, so each carries a standard error propagated from the two averages' own
(first order, the compressed and dense scores treated as independent): at the quick evaluation's 40 items per task
a "104% retention" is 104 ± 10%, and the ± is what tells a reader the figure carries no claim.
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


def ratio_stderr(a: float, a_stderr: float | None, b: float, b_stderr: float | None) -> float | None:
    """Standard error of a / b from those of a and b, taken as independent (first-order propagation).

    sigma_R = |R| sqrt((sigma_a / a)^2 + (sigma_b / b)^2), written as sqrt((sigma_a / b)^2 + (a sigma_b / b^2)^2)
    so that a = 0 (a model at chance, for above-chance retention) needs no special case. None if either stderr
    is unknown.
    """
    if a_stderr is None or b_stderr is None or b == 0:
        return None
    return math.sqrt((a_stderr / b) ** 2 + (a * b_stderr / b**2) ** 2)


def retention(average: float, stderr: float | None, dense_average: float,
              dense_stderr: float | None) -> dict[str, float | None]:
    """Plain retention, compressed average / dense average, with its propagated standard error."""
    return {"value": average / dense_average, "stderr": ratio_stderr(average, stderr, dense_average, dense_stderr)}


def margin_retention(scores: dict[str, float], dense_scores: dict[str, float],
                     stderrs: dict[str, float | None] | None = None,
                     dense_stderrs: dict[str, float | None] | None = None) -> dict[str, Any]:
    """Mean over tasks of (score - chance) / (dense score - chance), with each task's ratio.

    A task on which the dense model is not above chance has no margin to retain: it is left out of the mean and
    listed under ``excluded`` (the mean is None when every task is excluded). Given each task's stderr, every
    ratio gets its own (chance is exact, so the shifted scores keep their stderr) and the mean gets
    sqrt(sum se_t^2) / n over the independent tasks; ``stderr`` is None when any of these is unknown.
    """
    per_task: dict[str, float] = {}
    per_task_stderr: dict[str, float | None] = {}
    excluded: list[str] = []
    for task, score in scores.items():
        if task not in dense_scores:
            continue
        chance = CHANCE.get(task)
        if chance is None or dense_scores[task] - chance <= 0:
            excluded.append(task)
            continue
        per_task[task] = (score - chance) / (dense_scores[task] - chance)
        per_task_stderr[task] = ratio_stderr(score - chance, (stderrs or {}).get(task),
                                             dense_scores[task] - chance, (dense_stderrs or {}).get(task))
    mean = sum(per_task.values()) / len(per_task) if per_task else None
    stderr = average_stderr(list(per_task_stderr.values())) if per_task else None
    return {"mean": mean, "stderr": stderr, "per_task": per_task, "per_task_stderr": per_task_stderr,
            "excluded": excluded, "chance": {t: CHANCE.get(t) for t in scores}}


def retention_figures(zero_shot: dict[str, Any], dense_zero_shot: dict[str, Any]) -> dict[str, Any]:
    """Both retentions of a ``summarize`` dict against the dense model's, each with its standard error.

    ``{"retention", "retention_stderr", "margin_retention", "margin_retention_stderr", "margin_retention_detail"}``
    (stderrs None where lm-eval reported none). The report recomputes these from the scores it shows, so a
    metrics.json written before the stderrs were recorded still gets its ±.
    """
    from pipeline.evaluation.zero_shot import task_scores, task_stderrs  # zero_shot imports this module

    plain = retention(zero_shot["average"], zero_shot.get("average_stderr"), dense_zero_shot["average"],
                      dense_zero_shot.get("average_stderr"))
    # The dense scores are taken by the compressed model's average metric, so both sides compare like with like.
    metric = zero_shot.get("average_metric")
    margin = margin_retention(task_scores(zero_shot), task_scores(dense_zero_shot, metric),
                              task_stderrs(zero_shot), task_stderrs(dense_zero_shot, metric))
    return {"retention": plain["value"], "retention_stderr": plain["stderr"], "margin_retention": margin["mean"],
            "margin_retention_stderr": margin["stderr"], "margin_retention_detail": margin}
