"""Kill-anywhere soak (marker ``slow``, not in ``make test``): SIGKILL the whole ``modegpt run`` chain at a random
moment inside each stage, rerun the same command, and compare every artifact file with an uninterrupted run's.

    .venv/bin/pytest -m slow tests/stages/test_soak.py                       # 3 kills in each stage
    MODEGPT_SOAK_KILLS=1 .venv/bin/pytest -m slow tests/stages/test_soak.py -k capture

The uninterrupted chain runs once on a tiny random Llama-style model in the engines' shape (so export runs too);
its log gives each stage's duration. Each trial starts a fresh run, waits for the target stage's banner in its log,
kills the process group at a uniformly random moment within that stage's reference duration (capture's chunk writes
and record renames, solve's layer files, assemble's and export's directory renames are all hit), reruns the same
command to completion and compares every artifact file: store chunks and layer records, tokens, solve factors and
plan, checkpoint shards and config, the GGUF, metrics and the report. JSON files are compared without their
timestamps and timings, and with the run's own root directory in recorded paths replaced by a placeholder (the only
differences two correct runs in two directories may have). A trial whose run finished before its kill, or was killed
in a later stage, is retried with the kill moment halved (a short stage such as prepare may still be passed: its
kills land in the next one); a trial whose kill never lands fails, since it tested nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, tiny_overrides

from pipeline.artifacts.expected import STAGES
from pipeline.tiny import save_tiny_model

KILLS = int(os.environ.get("MODEGPT_SOAK_KILLS", "3"))  # per stage
# Kill moments tried per trial, halved each time, until a kill lands inside the target stage; failing that, the
# latest attempt killed elsewhere is rerun, and a trial whose runs all finished before their kill fails.
ATTEMPTS = 4
# Timings and timestamps, and the store's byte count, which moves with the printed length of the timings inside
# its layer records: nothing computed from the data.
VOLATILE_KEYS = {"seconds", "created", "written", "peak_device_bytes", "bytes"}
BANNER = re.compile(r"^\[([\d\- :,]+)\]\[modegpt\]\[INFO\] - == stage (\w+) ==", re.M)


def _overrides(root: Path, model_dir: Path) -> list[str]:
    # deci at round_to 16 fits the tiny model's widths (the default 256 does not) and lets export run
    return tiny_overrides(root, model_dir, "llama", **{
        "compression.shape": "deci", "compression.round_to": 16, "compression.rate": 0.3, "export.quantize": "[]",
        "eval.tasks": "[piqa,arc_easy]", "eval.perplexity_max_windows": 4, "hydra.run.dir": f"{root}/.hydra-run"})


def _launch(root: Path, model_dir: Path, log: Path) -> subprocess.Popen:
    """``modegpt run`` in a process group of its own (so a kill takes every child with it), appending to ``log``."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    with open(log, "ab") as f:
        return subprocess.Popen([sys.executable, "-m", "stages.cli", "run", *_overrides(root, model_dir)], cwd=REPO,
                                env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float = 900.0) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"`modegpt run` took more than {timeout:.0f} s")


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def digests(root: Path) -> dict[str, str]:
    """Relative path -> content digest of every artifact file (JSON without its volatile fields)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if not path.is_file() or rel.startswith(".hydra-run") or rel.endswith(".lock") or "/cache/" in f"/{rel}":
            continue
        data = path.read_bytes()
        if path.suffix == ".json":
            # Paths inside a record (the checkpoint's location) name the run's own root: compare them relative.
            text = data.decode().replace(json.dumps(str(root))[1:-1], "<root>")
            data = json.dumps(_strip(json.loads(text)), sort_keys=True).encode()
        out[rel] = hashlib.sha256(data).hexdigest()
    return out


def differing(want: dict[str, str], got: dict[str, str]) -> list[str]:
    return sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))


def _seconds(stamp: str) -> float:
    clock, millis = stamp.split(",")
    return time.mktime(time.strptime(clock, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000


def banners(log: Path) -> list[tuple[str, float]]:
    """(stage, start time) of every stage banner in a run's log, in order."""
    return [(name, _seconds(stamp)) for stamp, name in BANNER.findall(log.read_text(errors="replace"))]


def stage_durations(log: Path, end: float) -> dict[str, float]:
    """Each stage's wall time in a finished run, from the timestamps of its banner and the next one's."""
    found = banners(log)
    bounds = [t for _, t in found[1:]] + [end]
    return {name: max(stop - start, 0.05) for (name, start), stop in zip(found, bounds, strict=True)}


def _wait_for_stage(proc: subprocess.Popen, log: Path, stage: str, timeout: float = 600.0) -> bool:
    """Poll the run's log until ``stage`` starts; False if the run ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if stage in [name for name, _ in banners(log)]:
            return True
        time.sleep(0.01)
    return False


def _tail(log: Path, lines: int = 15) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float], dict[str, str]]:
    """The uninterrupted chain: (tiny model folder, each stage's seconds, its artifacts' digests)."""
    work = tmp_path_factory.mktemp("soak")
    model_dir = save_tiny_model(work / "model", "llama", seed=0)
    root, log = work / "reference", work / "reference.log"
    code = _finish(_launch(root, model_dir, log))
    assert code == 0, f"the uninterrupted run failed (exit {code}), {log}:\n{_tail(log)}"
    durations = stage_durations(log, time.time())
    # Every stage ran (none skipped, e.g. export for a shape no engine holds) and left files to compare.
    assert list(durations) == list(STAGES), _tail(log)
    want = digests(root)
    for part in ("calib", "stores", "solve", "compressed", "export", "eval", "report"):
        assert any(f"/{part}/" in f"/{rel}" for rel in want), f"no {part}/ file among the {len(want)} artifacts"
    return model_dir, durations, want


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_a_run_killed_inside_the_stage_then_rerun_leaves_the_uninterrupted_runs_artifacts(
        stage: str, reference: tuple[Path, dict[str, float], dict[str, str]], tmp_path: Path) -> None:
    model_dir, durations, want = reference
    failures, report = [], []
    for trial in range(KILLS):
        at = random.Random(f"{stage}/{trial}").random() * durations[stage]
        killed = None  # (root, log, kill moment, the stage running at the kill) of the attempt to rerun
        for attempt in range(ATTEMPTS):
            root, log = tmp_path / f"trial-{trial}-{attempt}", tmp_path / f"trial-{trial}-{attempt}.log"
            proc = _launch(root, model_dir, log)
            if not _wait_for_stage(proc, log, stage):
                _finish(proc)
                pytest.fail(f"the run ended (exit {proc.returncode}) before stage {stage} started, {log}:\n"
                            f"{_tail(log)}")
            try:
                proc.wait(timeout=at)  # the stage (or the whole run) may finish first
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass  # it ended by itself in between: returncode says which
            proc.wait()
            if proc.returncode != -signal.SIGKILL:
                assert proc.returncode == 0, f"the run failed before its kill, {log}:\n{_tail(log)}"
            else:
                killed = (root, log, at, banners(log)[-1][0])
                if killed[3] == stage:
                    break
            # Finished first, or killed in a later stage (a warm rerun outpaces the reference): try earlier.
            at /= 2
        if killed is None:
            failures.append(f"trial {trial}: every run finished before its kill (last at {at:.3f} s): nothing tested")
            continue
        root, log, at, running = killed
        code = _finish(_launch(root, model_dir, log))
        got = digests(root) if code == 0 else {}
        diff = differing(want, got)
        detail = "identical" if code == 0 and not diff else (
            f"rerun exit {code}, {log}:\n{_tail(log)}" if code else f"{len(diff)} files differ: {', '.join(diff[:6])}")
        line = f"trial {trial}: kill {at:.2f} s into {stage} (running: {running}) -> {detail}"
        report.append(line)
        if detail != "identical":
            failures.append(line)
    print("\n".join(report))
    assert not failures, "\n".join(failures)


def test_digests_ignore_timings_and_the_run_root_but_not_the_data(tmp_path: Path) -> None:
    """The comparison the soak rests on: two correct runs in two directories compare equal, a changed byte not."""

    def write(root: Path, seconds: float, value: int, chunk: bytes) -> None:
        (root / "solve").mkdir(parents=True)
        record = {"seconds": seconds, "created": f"t{seconds}", "checkpoint": f"{root}/checkpoint", "value": value}
        (root / "solve" / "manifest.json").write_text(json.dumps(record))
        (root / "solve" / "layer-0.bin").write_bytes(chunk)
        (root / ".hydra-run").mkdir()
        (root / ".hydra-run" / "run.log").write_text(f"{seconds}")

    write(a := tmp_path / "a", 1.0, 7, b"\x00\x01")
    write(b := tmp_path / "b", 2.5, 7, b"\x00\x01")
    assert digests(a) == digests(b) and len(digests(a)) == 2
    write(c := tmp_path / "c", 1.0, 7, b"\x00\x02")
    assert differing(digests(a), digests(c)) == ["solve/layer-0.bin"]
    write(d := tmp_path / "d", 1.0, 8, b"\x00\x01")
    assert differing(digests(a), digests(d)) == ["solve/manifest.json"]
    (d / "solve" / ".layer-1.bin.abc.tmp").write_bytes(b"torn")  # a leftover of a killed write is a difference
    assert differing(digests(a), digests(d)) == ["solve/.layer-1.bin.abc.tmp", "solve/manifest.json"]


def test_stage_durations_come_from_consecutive_banners(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    log.write_text("[2026-12-02 10:00:00,000][modegpt][INFO] - == stage prepare ==\n"
                   "[2026-12-02 10:00:00,010][other][INFO] - a line\n"
                   "[2026-12-02 10:00:01,500][modegpt][INFO] - == stage tokenize ==\n")
    durations = stage_durations(log, end=_seconds("2026-12-02 10:00:04,000"))
    assert list(durations) == ["prepare", "tokenize"]
    assert durations["prepare"] == pytest.approx(1.5) and durations["tokenize"] == pytest.approx(2.5)
