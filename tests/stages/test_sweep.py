"""A Hydra multirun sweep over three rates captures once and solves, assembles and evaluates each rate."""

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import compose_config, tiny_overrides

from pipeline.artifacts import ArtifactPaths, read_manifest

REPO = Path(__file__).resolve().parents[2]


def test_multirun_sweep_captures_once(tmp_path: Path, tiny_model_dirs) -> None:
    overrides = [*tiny_overrides(tmp_path, tiny_model_dirs["llama"], "llama"), "eval.tasks=[piqa]", "eval.limit=2",
                 "eval.perplexity_max_windows=1"]
    cmd = [sys.executable, "-m", "stages.cli", "run", "-m", *overrides, "compression.rate=0.1,0.2,0.3"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    log = proc.stdout + proc.stderr
    # the store is captured once for the whole sweep; each rate's solve recaptures on its own compressed layers
    # (compression.sequential, the default) without touching the store
    assert log.count("sequential capture of layer 1/3") == 3
    assert log.count("capture layer 1/3") == 1 + 3
    assert log.count("reusing correlation store") == 2
    cfg = compose_config(overrides)
    paths = ArtifactPaths(cfg)
    assert read_manifest(paths.store).status == "complete"
    for rate in (0.1, 0.2, 0.3):
        metrics = json.loads(paths.rate_metrics(rate).read_text())
        assert metrics["rate"] == rate and metrics["compressed"] and "retention" in metrics
        assert (paths.checkpoint(rate) / "config.json").is_file()
    report = (paths.report / "report.md").read_text()
    assert report.count("| modegpt-validated") == 3
    for png in ("perplexity_vs_rate.png", "zero_shot_vs_rate.png", "kept_dims.png"):
        assert (paths.report / png).read_bytes()[:4] == b"\x89PNG"
