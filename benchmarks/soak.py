"""Kill-anywhere soak: SIGKILL the whole chain at random moments, rerun the same command, compare the artifacts.

    .venv/bin/python benchmarks/soak.py                    # 20 kills on the tiny Llama-style model
    .venv/bin/python benchmarks/soak.py --kills 40 --family opt

First the chain (`modegpt run`: prepare, tokenize, capture, solve, assemble, evaluate, report) runs once,
uninterrupted, on a tiny random model; its wall time T is split into --kills equal strata and each trial kills a
fresh run at a uniformly random moment inside its own stratum (so the kills spread over every stage, chunk
writes and renames included), reruns the same command to completion, and compares every artifact file with the
uninterrupted run's: store chunks and layer records, tokens, solve factors and plan, checkpoint shards and
config, metrics and the report. Manifests are compared without their timestamps; metrics without their
"seconds" timings (the only fields that legitimately differ between two runs). It prints one line per trial
(the stage that was running when the kill landed, and whether the rerun matched) and the count of matching runs.
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
            data = json.dumps(_strip(json.loads(data)), sort_keys=True).encode()
        out[rel] = hashlib.sha256(data).hexdigest()
    return out


def run(cmd: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    with open(log, "ab") as f:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def stage_at_kill(log: Path) -> str:
    stages = re.findall(r"== stage (\w+) ==", log.read_text(errors="replace"))
    return stages[-1] if stages else "startup"


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
        want = digests(reference)
        print(f"uninterrupted chain: {total:.1f} s, {len(want)} artifact files")
        matched = 0
        for trial in range(args.kills):
            root, log = work / f"trial-{trial:02d}", work / f"trial-{trial:02d}.log"
            at = total * (trial + rng.random()) / args.kills
            proc = run(command(root, model_dir, args.family), log)
            try:
                proc.wait(timeout=at)
                killed = False  # finished before the kill moment (startup varies between runs)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                killed = True
            stage = stage_at_kill(log) if killed else "none (finished first)"
            rerun = run(command(root, model_dir, args.family), log)
            code = rerun.wait()
            got = digests(root) if code == 0 else {}
            same = code == 0 and got == want
            matched += same
            differing = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
            detail = "identical" if same else (f"rerun exit {code}" if code else f"{len(differing)} files differ: "
                                                + ", ".join(differing[:4]))
            print(f"trial {trial + 1:2d}: kill at {at:6.1f} s during {stage:<22} -> {detail}", flush=True)
        print(f"\n{matched}/{args.kills} runs ended with artifacts identical to the uninterrupted run")
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
