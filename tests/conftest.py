"""Shared fixtures: tiny random models saved as local HF folders, and composed pipeline configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from pipeline.config import register_configs, validate
from pipeline.tiny import save_tiny_model

register_configs()


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {family: save_tiny_model(root / family, family, seed=0) for family in ("llama", "opt")}


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    with initialize_config_module(config_module="conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides or []))


def tiny_overrides(root: Path, model_dir: Path, family: str, **extra: Any) -> list[str]:
    """A pipeline config for a tiny local model on a small slice of the embedded calibration text."""
    values = {
        "model.name": f"tiny-{family}", "model.family": family, "model.source": str(model_dir),
        "model.source_kind": "hf", "model.gguf_file": None, "model.dtype": "float32", "model.max_seq_len": 64,
        "calibration.num_samples": 8, "calibration.seq_len": 32, "calibration.batch_size": 3,
        "paths.root": str(root), "device": "cpu", "eval.limit": 4, "eval.batch_size": 4,
    }
    values.update(extra)
    return [f"{k}={'null' if v is None else v}" for k, v in values.items()]


@pytest.fixture(params=["llama", "opt"])
def tiny_cfg(request: pytest.FixtureRequest, tmp_path: Path, tiny_model_dirs: dict[str, Path]) -> DictConfig:
    family = request.param
    cfg = compose_config(tiny_overrides(tmp_path / "outputs", tiny_model_dirs[family], family))
    validate(cfg)
    return cfg
