"""Kill-anywhere soak: SIGKILL the whole chain at random moments, rerun the same command, compare the artifacts.

    .venv/bin/python benchmarks/soak.py                    # 20 kills on the tiny Llama-style model
    .venv/bin/python benchmarks/soak.py --kills 40 --family opt

First the chain (`modegpt run`: prepare, tokenize, capture, solve, assemble, evaluate, report) runs once,
uninterrupted, on a tiny random model; its log gives each stage's duration. The trials take the stages in turn:
each starts a fresh run, waits for the target stage's banner in its log, kills the whole process group at a
uniformly random moment within that stage's reference duration (so capture's chunk writes and record renames,
solve's layer files and assemble's directory rename are all hit), reruns the same command to completion, and
compares every artifact file with the uninterrupted run's: store chunks and layer records, tokens, solve factors
and plan, checkpoint shards and config, metrics and the report. JSON files are compared without their
timestamps and "seconds" timings, and with the run's own root directory in recorded paths replaced by a
placeholder (the only differences two correct runs in two directories may have). It prints one line per trial
and the count of runs whose artifacts matched.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# Timings and timestamps, and the store's byte count, which moves with the printed length of the timings inside
# its layer records: nothing computed from the data.
VOLATILE_KEYS = {"seconds", "created", "written", "peak_device_bytes", "bytes"}


def overrides(root: Path, model_dir: Path, family: str) -> list[str]:
    return [
        f"model.name=tiny-{family}", f"model.family={family}", f"model.source={model_dir}", "model.source_kind=hf",
        "model.gguf_file=null", "model.dtype=float32", "model.max_seq_len=64", "calibration.num_samples=8",
        "calibration.seq_len=32", "calibration.batch_size=3", f"paths.root={root}", "device=cpu", "eval.limit=4",
        "eval.batch_size=4", "eval.tasks=[piqa,arc_easy]", "eval.perplexity_max_windows=4",
        f"hydra.run.dir={root}/.hydra-run",
    ]


def command(root: Path, model_dir: Path, family: str) -> list[str]:
    return [sys.executable, "-m", "stages.cli", "run", *overrides(root, model_dir, family)]


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


def run(cmd: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    with open(log, "ab") as f:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


BANNER = re.compile(r"^\[([\d\- :,]+)\]\[modegpt\]\[INFO\] - == stage (\w+) ==", re.M)


def _seconds(stamp: str) -> float:
    return time.mktime(time.strptime(stamp.split(",")[0], "%Y-%m-%d %H:%M:%S")) + int(stamp.split(",")[1]) / 1000


def stage_durations(log: Path, end: float) -> dict[str, float]:
    """Each stage's wall time in a finished run, from the timestamps of its banner and the next one's."""
    found = [(name, _seconds(stamp)) for stamp, name in BANNER.findall(log.read_text(errors="replace"))]
    bounds = [t for _, t in found[1:]] + [end]
    return {name: max(stop - start, 0.05) for (name, start), stop in zip(found, bounds, strict=True)}


def stage_at_kill(log: Path) -> str:
    stages = [name for _, name in BANNER.findall(log.read_text(errors="replace"))]
    return stages[-1] if stages else "startup"


def wait_for_stage(proc: subprocess.Popen, log: Path, stage: str, timeout: float = 300.0) -> bool:
    """Poll the run's log until ``stage`` starts; False if the run ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if stage in [name for _, name in BANNER.findall(log.read_text(errors="replace"))]:
            return True
        time.sleep(0.01)
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--family", default="llama")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from pipeline.tiny import save_tiny_model

    work = Path(tempfile.mkdtemp(prefix="modegpt-soak-"))
    rng = random.Random(args.seed)
    try:
        model_dir = save_tiny_model(work / "model", args.family, seed=0)
        reference = work / "reference"
        start = time.perf_counter()
        proc = run(command(reference, model_dir, args.family), work / "reference.log")
        if proc.wait() != 0:
            raise SystemExit(f"the uninterrupted run failed: see {work / 'reference.log'}")
        total = time.perf_counter() - start
        durations = stage_durations(work / "reference.log", time.time())
        want = digests(reference)
        print(f"uninterrupted chain: {total:.1f} s, {len(want)} artifact files; stage seconds: "
              + ", ".join(f"{k} {v:.2f}" for k, v in durations.items()))
        stages = list(durations)
        matched = 0
        for trial in range(args.kills):
            root, log = work / f"trial-{trial:02d}", work / f"trial-{trial:02d}.log"
            target = stages[trial % len(stages)]
            at = rng.random() * durations[target]
            proc = run(command(root, model_dir, args.family), log)
            killed = False
            if wait_for_stage(proc, log, target):
                try:
                    proc.wait(timeout=at)  # the stage (or the whole run) may finish first
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    killed = True
            if not killed and proc.poll() is None:
                proc.wait()
            stage = stage_at_kill(log) if killed else "none (finished first)"
            rerun = run(command(root, model_dir, args.family), log)
            code = rerun.wait()
            got = digests(root) if code == 0 else {}
            same = code == 0 and got == want
            matched += same
            differing = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
            detail = "identical" if same else (f"rerun exit {code}" if code else f"{len(differing)} files differ: "
                                                + ", ".join(differing[:4]))
            print(f"trial {trial + 1:2d}: kill {at:5.2f} s into {target:<9} (running: {stage:<21}) -> {detail}",
                  flush=True)
        print(f"\n{matched}/{args.kills} runs ended with artifacts identical to the uninterrupted run")
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
