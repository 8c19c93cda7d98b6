"""Long loops report progress in a job log too (tqdm prints nothing there)."""

import logging

from pipeline import progress as progress_module
from pipeline.progress import progress


def test_a_job_log_gets_lines_with_eta(caplog, monkeypatch) -> None:
    monkeypatch.setattr(progress_module, "LOG_SECONDS", 0.0)
    with caplog.at_level(logging.INFO, logger="pipeline.progress"):
        assert list(progress(range(4), desc="probe", unit="batch", terminal=False)) == [0, 1, 2, 3]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4 and lines[0].startswith("probe: 1/4 batch") and "ETA" in lines[0]
    assert lines[-1].startswith("probe: 4/4 batch") and "ETA" not in lines[-1]


def test_lines_are_rate_limited_but_the_last_is_logged(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="pipeline.progress"):
        list(progress(range(1000), desc="curves", total=1000, initial=0, terminal=False))
    assert [r.getMessage().split(" ")[1] for r in caplog.records] == ["1000/1000"]
