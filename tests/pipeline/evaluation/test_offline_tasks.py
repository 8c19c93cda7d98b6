"""The offline tasks are lm-eval's stock tasks on rebuilt local splits: same configs, rows, prompts and targets."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.evaluation.offline_data import (
    DEVIATIONS,
    EXPECTED_ROWS,
    TASK_SPLITS,
    dump_docs,
    mc_rows_from_dump,
    olmes_dump,
    olmo_arrow,
    read_arrow,
)
from pipeline.evaluation.tasks import OFFLINE_TASKS, PAPER_TASKS, STOCK_YAMLS, hf_offline, stock_tasks_dir

# Keys that name the data source; everything else must equal the stock config.
_DATA_KEYS = {"dataset_path", "dataset_name", "dataset_kwargs", "training_split", "validation_split", "test_split",
              "fewshot_split", "metadata"}


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipeline.evaluation.tasks import materialize_tasks

    return materialize_tasks(tmp_path_factory.mktemp("zero-shot") / "lm_eval_tasks")


@pytest.fixture(scope="module")
def offline_tasks(task_dir: Path) -> dict[str, Any]:
    from lm_eval.tasks import TaskManager, get_task_dict

    with hf_offline():
        manager = TaskManager(include_path=str(task_dir), include_defaults=False)
        return get_task_dict(list(OFFLINE_TASKS), manager)


def _docs(task: Any) -> list[dict[str, Any]]:
    return list(task.eval_docs)


def _fn_id(value: Any) -> Any:
    return (value.__module__.rsplit("lm_eval.tasks.", 1)[-1], value.__qualname__) if callable(value) else value


def test_task_lists() -> None:
    assert PAPER_TASKS == ("piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge")
    assert set(OFFLINE_TASKS) == set(PAPER_TASKS) | {"boolq", "openbookqa", "lambada_openai"}
    assert set(OFFLINE_TASKS) == set(EXPECTED_ROWS) == set(TASK_SPLITS)


def test_tasks_load_with_stock_names_splits_and_row_counts(offline_tasks: dict[str, Any]) -> None:
    assert set(offline_tasks) == set(OFFLINE_TASKS)
    for name, task in offline_tasks.items():
        assert task.config.task == name
        assert len(_docs(task)) == EXPECTED_ROWS[name], name
        assert task.config.metadata["split"] == TASK_SPLITS[name]
        assert ("deviation" in task.config.metadata) == (name in DEVIATIONS)
    expected_splits = {"arc_easy": "test", "arc_challenge": "test", "openbookqa": "test", "lambada_openai": "test"}
    assert {t: s for t, s in TASK_SPLITS.items() if s == "test"} == expected_splits


@pytest.mark.parametrize("task", OFFLINE_TASKS)
def test_config_equals_stock_but_for_the_data_source(task_dir: Path, task: str) -> None:
    from lm_eval.tasks._yaml_loader import load_yaml

    stock = load_yaml(stock_tasks_dir() / STOCK_YAMLS[task], resolve_func=True)
    ours = load_yaml(task_dir / f"{task}.yaml", resolve_func=True)
    assert {k: _fn_id(v) for k, v in ours.items() if k not in _DATA_KEYS} == {
        k: _fn_id(v) for k, v in stock.items() if k not in _DATA_KEYS
    }
    assert ours["metadata"]["version"] == stock["metadata"]["version"]
    assert ours["dataset_path"] == "json" and set(ours["dataset_kwargs"]["data_files"]) == {TASK_SPLITS[task]}


def test_hellaswag_matches_stock_process_docs(offline_tasks: dict[str, Any]) -> None:
    import datasets
    from lm_eval.tasks.hellaswag.utils import process_docs

    raw = read_arrow(olmo_arrow("hellaswag/none"))
    task, docs = offline_tasks["hellaswag"], _docs(offline_tasks["hellaswag"])
    for i in (0, 1, 4321, len(raw) - 1):
        (stock,) = process_docs(datasets.Dataset.from_list([raw[i]])).to_list()
        assert task.doc_to_text(docs[i]) == stock["query"]
        assert task.doc_to_choice(docs[i]) == stock["choices"]
        assert task.doc_to_target(docs[i]) == stock["gold"] == int(raw[i]["label"])


def test_winogrande_matches_stock_preprocess(offline_tasks: dict[str, Any]) -> None:
    from lm_eval.tasks.winogrande import preprocess_winogrande as stock

    raw = read_arrow(olmo_arrow("winogrande/winogrande_xl"))
    task, docs = offline_tasks["winogrande"], _docs(offline_tasks["winogrande"])
    for i in (0, 7, len(raw) - 1):
        assert task.doc_to_text(docs[i]) == stock.doc_to_text(raw[i])
        assert task.doc_to_choice(docs[i]) == stock.doc_to_choice(raw[i])
        assert task.doc_to_target(docs[i]) == stock.doc_to_target(raw[i])


def test_piqa_matches_stock_template(offline_tasks: dict[str, Any]) -> None:
    raw = read_arrow(olmo_arrow("piqa/plain_text"))
    task, docs = offline_tasks["piqa"], _docs(offline_tasks["piqa"])
    for i in (0, 3, len(raw) - 1):
        assert task.doc_to_text(docs[i]) == f"Question: {raw[i]['goal']}\nAnswer:"
        assert task.doc_to_choice(docs[i]) == [raw[i]["sol1"], raw[i]["sol2"]]
        assert task.doc_to_target(docs[i]) == raw[i]["label"]


@pytest.mark.parametrize("task", ["arc_easy", "arc_challenge", "openbookqa"])
def test_test_splits_reproduce_the_olmes_requests(offline_tasks: dict[str, Any], task: str) -> None:
    reference = dump_docs(olmes_dump(task, "test_rc_5shot"))
    lm_task, docs = offline_tasks[task], _docs(offline_tasks[task])
    for doc, ref in zip(docs, reference, strict=True):
        text = lm_task.doc_to_text(doc)
        # Stock OpenBookQA prompts with the bare question stem; OLMES wraps it as ARC does.
        assert (text if task != "openbookqa" else f"Question: {text}\nAnswer:") == ref["query"]
        assert lm_task.doc_to_choice(doc) == ref["choices"]
        assert lm_task.doc_to_target(doc) == ref["gold"]


def test_boolq_prompt_is_the_super_glue_prompt(offline_tasks: dict[str, Any]) -> None:
    reference = dump_docs(olmes_dump("boolq", "rc_0shot"))
    task, docs = offline_tasks["boolq"], _docs(offline_tasks["boolq"])
    for i in (0, 1, 1000, len(docs) - 1):
        assert task.doc_to_text(docs[i]) == reference[i]["query"]
        assert " -- " in docs[i]["passage"]  # super_glue's "Title -- passage"
        assert task.doc_to_choice(docs[i]) == ["no", "yes"]
        assert ["yes", "no"][reference[i]["gold"]] == ["no", "yes"][task.doc_to_target(docs[i])]


def test_lambada_reproduces_the_olmes_requests(offline_tasks: dict[str, Any]) -> None:
    task, docs = offline_tasks["lambada_openai"], _docs(offline_tasks["lambada_openai"])
    with gzip.open(olmes_dump("lambada", "bpb_0shot"), "rt", encoding="utf-8") as f:
        requests = [json.loads(line)["request"] for line in f]
    for doc, req in zip(docs, requests, strict=True):
        assert task.doc_to_text(doc) == req["context"]
        assert task.doc_to_target(doc) == req["continuation"]


@pytest.mark.parametrize(
    ("task", "dataset", "question_key"),
    [("arc_easy", "ai2_arc/ARC-Easy", "question"), ("arc_challenge", "ai2_arc/ARC-Challenge", "question"),
     ("openbookqa", "openbookqa/main", "question_stem")],
)
def test_dump_rebuild_reproduces_the_validation_split(task: str, dataset: str, question_key: str) -> None:
    """The test-split rebuild, run on the validation dump, gives back the Hub's validation rows."""
    rebuilt = mc_rows_from_dump(olmes_dump(task, "val_rc_5shot"), question_key)
    hub = read_arrow(olmo_arrow(dataset))
    assert [r["id"] for r in rebuilt] == [r["id"] for r in hub]
    for ours, ref in zip(rebuilt, hub, strict=True):
        assert ours[question_key] == ref[question_key]
        assert ours["choices"]["text"] == ref["choices"]["text"]
        gold = ref["choices"]["label"].index(ref["answerKey"].lstrip())
        assert ours["choices"]["label"].index(ours["answerKey"]) == gold
