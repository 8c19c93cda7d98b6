"""Artifact directories are named by what produced them: config subset + input identities, never a stage's output."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from conftest import compose_config, tiny_overrides

from pipeline.artifacts import ArtifactPaths


def _jsonl(path: Path, word: str) -> Path:
    path.write_text("\n".join(json.dumps({"text": f"{word} text {i} " * 20}) for i in range(50)))
    return path


def _paths(tmp_path: Path, model_dir: Path, **extra) -> ArtifactPaths:
    return ArtifactPaths(compose_config(tiny_overrides(tmp_path / "out", model_dir, "llama", **extra)))


def _jsonl_paths(tmp_path: Path, model_dir: Path, data: Path, **extra) -> ArtifactPaths:
    return _paths(tmp_path, model_dir, **{"calibration.source": "jsonl", "calibration.path": str(data),
                                          "calibration.name": "c4", **extra})


def test_two_calibration_files_get_two_keys_under_one_readable_prefix(tmp_path: Path, tiny_model_dirs) -> None:
    model = tiny_model_dirs["llama"]
    a = _jsonl_paths(tmp_path, model, _jsonl(tmp_path / "a.jsonl", "alpha"))
    b = _jsonl_paths(tmp_path, model, _jsonl(tmp_path / "b.jsonl", "beta"))
    assert a.model_key == b.model_key and a.calibration_name == b.calibration_name == "c4-8x32-seed0"
    assert a.calibration_key.startswith("c4-8x32-seed0-") and a.calibration_key != b.calibration_key
    assert a.tokens != b.tokens and a.store != b.store and a.run_root != b.run_root and a.solve() != b.solve()
    assert a.latest_run == b.latest_run  # the config-named view DVC tracks is shared: it points at the latest
    same_text = _jsonl_paths(tmp_path, model, shutil.copy(tmp_path / "a.jsonl", tmp_path / "copy.jsonl"))
    assert same_text.calibration_key != a.calibration_key  # calibration.path is part of tokenize's config


def test_file_content_not_mtime_decides_the_key(tmp_path: Path, tiny_model_dirs) -> None:
    data = _jsonl(tmp_path / "a.jsonl", "alpha")
    before = _jsonl_paths(tmp_path, tiny_model_dirs["llama"], data).calibration_key
    os.utime(data, ns=(10**18, 10**18))  # touched, same bytes
    assert _jsonl_paths(tmp_path, tiny_model_dirs["llama"], data).calibration_key == before
    data.write_text(data.read_text() + '\n{"text": "more"}')
    assert _jsonl_paths(tmp_path, tiny_model_dirs["llama"], data).calibration_key != before


def test_a_missing_calibration_file_still_has_a_key(tmp_path: Path, tiny_model_dirs) -> None:
    """Naming directories never fails on a missing input: tokenize reports it, as one line, first."""
    paths = _jsonl_paths(tmp_path, tiny_model_dirs["llama"], tmp_path / "absent.jsonl")
    assert paths.tokens.name.startswith("c4-8x32-seed0-") and not paths.tokens.exists()


def test_each_key_changes_only_with_what_produced_its_artifact(tmp_path: Path, tiny_model_dirs) -> None:
    model = tiny_model_dirs["llama"]
    base = _paths(tmp_path, model)
    batch = _paths(tmp_path, model, **{"calibration.batch_size": 5})  # batching only: same artifacts
    assert (batch.tokens, batch.store, batch.solve()) == (base.tokens, base.store, base.solve())
    dtype = _paths(tmp_path, model, **{"model.dtype": "float64"})  # same tokens, another forward: another store
    assert dtype.tokens == base.tokens and dtype.store != base.store and dtype.run_root != base.run_root
    assert dtype.run_root.name == f"{base.calibration_key}-float64"
    seed = _paths(tmp_path, model, **{"calibration.seed": 1})
    assert seed.tokens != base.tokens and seed.calibration_name == "boolq-8x32-seed1"
    solver = ArtifactPaths(compose_config([*tiny_overrides(tmp_path / "out", model, "llama"),
                                           "compression.eig_floor=1e-6"]))
    assert solver.run_root == base.run_root and solver.solve() != base.solve()


def test_model_key_follows_weights_and_the_dense_dir_follows_the_source(tmp_path: Path, tiny_model_dirs) -> None:
    moved = tmp_path / "moved"
    shutil.copytree(tiny_model_dirs["llama"], moved)
    base = _paths(tmp_path, tiny_model_dirs["llama"])
    copy = _paths(tmp_path, moved)
    # Same weights elsewhere: its tokens, store and solves are found again; the (cheap) source record is not.
    assert copy.model_key == base.model_key and copy.store == base.store
    assert copy.dense_model != base.dense_model and copy.dense_model.name.startswith("tiny-llama-")
    other = tmp_path / "other"
    shutil.copytree(tiny_model_dirs["opt"], other)
    same_name = _paths(tmp_path, other)  # another model.source under the same model.name
    assert same_name.model_key != base.model_key and same_name.dense_model != base.dense_model
    assert same_name.model_key.startswith("tiny-llama-")
    hub = ArtifactPaths(compose_config(tiny_overrides(tmp_path, tiny_model_dirs["llama"], "llama",
                                                      **{"model.source": "org/model"})))
    pinned = ArtifactPaths(compose_config(tiny_overrides(tmp_path, tiny_model_dirs["llama"], "llama",
                                                         **{"model.source": "org/model", "model.revision": "v1"})))
    assert hub.model_key != pinned.model_key and hub.dense_model != pinned.dense_model
