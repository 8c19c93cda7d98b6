"""Failures a long job meets: a full disk mid-write loses nothing and reports one line; bad inputs."""

import errno
from pathlib import Path

import pytest
from conftest import compose_config, tiny_overrides

from pipeline.artifacts import ArtifactError, ArtifactPaths
from pipeline.solving import layers as layers_module
from stages import capture, cli, solve, tokenize


def test_disk_full_while_solving_keeps_finished_layers_and_resumes(tmp_path: Path, tiny_model_dirs, monkeypatch):
    cfg = compose_config(tiny_overrides(tmp_path, tiny_model_dirs["llama"], "llama",
                                        **{"compression.allocation": "error"}))  # one plan's layers, no candidates
    tokenize.run(cfg)
    capture.run(cfg)
    real_save = layers_module.save_file
    calls = []

    def save_until_full(tensors, filename, metadata=None):
        if Path(filename).parent.name == "layers":  # a layer's factors (the module curves are saved first)
            calls.append(filename)
        if len(calls) == 2:
            Path(filename).write_bytes(b"partial")  # the device fills up halfway through the file
            raise OSError(errno.ENOSPC, "No space left on device", filename)
        return real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(layers_module, "save_file", save_until_full)
    with pytest.raises(OSError) as info:
        solve.run(cfg)
    message = cli.user_error(info.value)
    assert message is not None and "no space left" in message and "\n" not in message
    layers = ArtifactPaths(cfg).solve() / "layers"
    assert sorted(p.name for p in layers.iterdir()) == ["00000.safetensors"]  # no torn file left behind
    monkeypatch.setattr(layers_module, "save_file", real_save)
    solve.run(cfg)
    assert len(list(layers.iterdir())) == 3


def test_bugs_are_not_disguised_as_user_errors() -> None:
    assert cli.user_error(ValueError("x")) is None
    assert cli.user_error(OSError(errno.EACCES, "denied")) is None
    assert cli.user_error(ArtifactError("stale")) == "stale"


def test_missing_local_model_is_a_clear_error(tmp_path: Path) -> None:
    from pipeline.assets import AssetError
    from pipeline.dense import load_model

    cfg = compose_config(tiny_overrides(tmp_path, tmp_path / "no-such-model", "llama"))
    with pytest.raises(AssetError, match="cannot load model.source="):
        load_model(cfg, ArtifactPaths(cfg).dense_model)
