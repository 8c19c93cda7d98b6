"""Progress of long loops: a tqdm bar with ETA in a terminal, log lines with ETA in a job log.

``tqdm(disable=None)`` prints nothing when output is not a terminal (a Slurm or CI log), so long work there was
silent until it ended; :func:`progress` logs a line at most every ``LOG_SECONDS`` (and at the end) instead.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
LOG_SECONDS = 30.0
log = logging.getLogger("pipeline.progress")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def progress(items: Iterable[T], desc: str, unit: str = "it", total: int | None = None, initial: int = 0,
             terminal: bool | None = None) -> Iterator[T]:
    """``items``, reporting progress: tqdm in a terminal, else a log line every ``LOG_SECONDS`` with rate and ETA."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if terminal if terminal is not None else sys.stderr.isatty():
        yield from tqdm(items, desc=desc, unit=unit, total=total, initial=initial)
        return
    start = last = time.monotonic()
    done = initial
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= LOG_SECONDS or (total is not None and done == total):
            last = now
            rate = (done - initial) / max(now - start, 1e-9)
            of = f"/{total}" if total is not None else ""
            eta = (f", ETA {_duration((total - done) / rate)}" if total is not None and rate > 0 and done < total
                   else "")
            log.info("%s: %d%s %s, %s elapsed%s", desc, done, of, unit, _duration(now - start), eta)
