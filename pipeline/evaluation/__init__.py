"""Evaluation of dense and compressed models: zero-shot accuracy through lm-eval (offline-capable).

Names are re-exported lazily: importing lm-eval and datasets takes seconds, and perplexity needs neither.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "OFFLINE_TASKS": "tasks", "PAPER_TASKS": "tasks", "materialize_tasks": "tasks", "task_manager": "tasks",
    "SPLIT_NOTES": "offline_data", "TASK_SPLITS": "offline_data", "EXPECTED_ROWS": "offline_data",
    "DEVIATIONS": "offline_data",
    "run_zero_shot": "zero_shot", "summarize": "zero_shot", "AVERAGE_METRICS": "zero_shot",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
