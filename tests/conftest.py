"""Shared fixtures: tiny random models saved as local HF folders, and composed pipeline configs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from omegaconf import DictConfig

from pipeline.adapters import families
from pipeline.config import compose_config, validate
from pipeline.tiny import save_tiny_model

# Every registered family (pipeline.adapters): the pipeline tests run on each one's representative tiny model.
FAMILIES = families()


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {family: save_tiny_model(root / family, family, seed=0) for family in FAMILIES}


def tiny_overrides(root: Path, model_dir: Path, family: str, **extra: Any) -> list[str]:
    """A pipeline config for a tiny local model on a small slice of the embedded calibration text."""
    values = {
        "model.name": f"tiny-{family}", "model.family": family, "model.source": str(model_dir),
        "model.source_kind": "hf", "model.gguf_file": None, "model.dtype": "float32", "model.max_seq_len": 64,
        "calibration.num_samples": 8, "calibration.seq_len": 32, "calibration.batch_size": 3,
        "paths.root": str(root), "device": "cpu", "eval.limit": 4, "eval.batch_size": 4,
        # the default deci shape cuts MLP widths in steps of 256, more than a tiny model has: tests of the solver
        # run the free shape unless they ask for an engine shape (tests/stages/test_solve_shapes.py, test_export.py)
        "compression.shape": "free",
    }
    values.update(extra)
    return [f"{k}={'null' if v is None else v}" for k, v in values.items()]


@pytest.fixture(params=FAMILIES)
def tiny_cfg(request: pytest.FixtureRequest, tmp_path: Path, tiny_model_dirs: dict[str, Path]) -> DictConfig:
    family = request.param
    cfg = compose_config(tiny_overrides(tmp_path / "outputs", tiny_model_dirs[family], family))
    validate(cfg)
    return cfg


REPO = Path(__file__).resolve().parents[1]


def modegpt(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """``modegpt <argv>`` in process, expected to succeed."""
    from stages import cli

    monkeypatch.setattr(sys, "argv", ["modegpt", *argv])
    cli.main()


def modegpt_error(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> str:
    """``modegpt <argv>`` in process, expected to fail; returns its one line."""
    from stages import cli

    monkeypatch.setattr(sys, "argv", ["modegpt", *argv])
    with pytest.raises(SystemExit) as info:
        cli.main()
    line = str(info.value.code)
    assert line.startswith("modegpt: error: ") and "\n" not in line, line
    return line


_KILL_SCRIPT = """
import importlib, os, signal
from conftest import compose_config
owner = importlib.import_module({module!r})
*parents, name = {attr!r}.split(".")
for parent in parents:
    owner = getattr(owner, parent)
original = getattr(owner, name)
calls = []
def wrapper(*args, **kwargs):
    calls.append(1)
    if len(calls) == {on_call} and not {after}:
        os.kill(os.getpid(), signal.SIGKILL)
    out = original(*args, **kwargs)
    if len(calls) == {on_call} and {after}:
        os.kill(os.getpid(), signal.SIGKILL)
    return out
setattr(owner, name, wrapper)
importlib.import_module("stages.{stage}").run(compose_config({overrides!r}))
"""


def run_killed(stage: str, module: str, attr: str, overrides: list[str], on_call: int = 1, after: bool = True) -> int:
    """Run a stage in a child process that SIGKILLs itself around the ``on_call``-th call of ``module.attr``.

    SIGKILL runs no cleanup (no ``finally``, no atexit), like a killed job; returns the exit code (-9).
    """
    import os
    import subprocess
    import sys

    script = _KILL_SCRIPT.format(module=module, attr=attr, on_call=on_call, after=after, stage=stage,
                                 overrides=list(overrides))
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'tests'}{os.pathsep}{REPO}"}
    return subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, timeout=300).returncode
