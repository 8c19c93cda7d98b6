"""Artifacts in the layout before content-addressed names: a run refuses them with one line, `modegpt migrate` moves
what matches its config (then reused, not recomputed) and leaves, with the reason, what another config produced."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

from conftest import compose_config, modegpt, modegpt_error, tiny_overrides

from pipeline.artifacts import ArtifactPaths, read_manifest
from stages import capture, prepare, solve, tokenize

OLD = "uses the layout before content-addressed artifacts"


def to_old_layout(overrides: list[str]) -> dict[str, Path]:
    """Move a config's artifacts to where the old layout put them (manifests are the same in both layouts)."""
    paths = ArtifactPaths(compose_config(overrides))
    old = paths.old_layout()
    moves = {paths.dense_model: old["model"], paths.tokens: old["tokens"], paths.store: old["store"],
             paths.run_root: old["run"], paths.model_root / "eval": old["dense evaluations"]}
    for src, dst in moves.items():
        if src.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
    shutil.rmtree(paths.root / "latest", ignore_errors=True)
    for empty in (paths.tokens.parent, paths.model_root, paths.store.parent):
        with contextlib.suppress(OSError):
            empty.rmdir()
    return old


def test_old_layout_is_refused_then_migrated_and_reused(tmp_path: Path, tiny_model_dirs, monkeypatch, capsys) -> None:
    overrides = tiny_overrides(tmp_path / "outputs", tiny_model_dirs["llama"], "llama")
    cfg = compose_config(overrides)
    for stage in (prepare, tokenize, capture, solve):
        stage.run(cfg)
    paths = ArtifactPaths(cfg)
    created = read_manifest(paths.solve()).created
    old = to_old_layout(overrides)
    assert not paths.tokens.exists() and (old["tokens"] / "tokens.safetensors").is_file()

    line = modegpt_error(["solve", *overrides], monkeypatch)
    assert OLD in line and "`modegpt migrate`" in line and "modegpt gc" in line
    assert not paths.model_root.exists()  # nothing recomputed beside the old directories
    capsys.readouterr()
    modegpt(["ls", f"paths.root={paths.root}"], monkeypatch)
    assert capsys.readouterr().out.count("complete (old layout)") == 4  # model, tokens, store, solve

    modegpt(["migrate", *overrides], monkeypatch)
    moved = [line for line in capsys.readouterr().out.splitlines() if line.startswith("moved ")]
    assert len(moved) == 4 and not (paths.root / cfg.model.name).exists()
    modegpt(["solve", *overrides], monkeypatch)  # found at its new name: reused
    assert read_manifest(paths.solve()).created == created
    modegpt(["migrate", *overrides], monkeypatch)
    assert "nothing of this config is in the old layout" in capsys.readouterr().out


def test_migrate_leaves_what_another_config_produced(tmp_path: Path, tiny_model_dirs, monkeypatch, capsys) -> None:
    def jsonl(name: str) -> Path:
        path = tmp_path / name
        path.write_text("\n".join(json.dumps({"text": f"{name} text {i} " * 20}) for i in range(50)))
        return path

    def config(data: Path) -> list[str]:
        return tiny_overrides(tmp_path / "outputs", tiny_model_dirs["llama"], "llama", **{
            "calibration.source": "jsonl", "calibration.path": str(data), "calibration.name": "c4"})

    a, b = config(jsonl("a.jsonl")), config(jsonl("b.jsonl"))
    for stage in (prepare, tokenize, capture):
        stage.run(compose_config(a))
    old = to_old_layout(a)  # the old layout had one directory for both: a's tokens sit where b's would
    capsys.readouterr()
    modegpt(["migrate", *b], monkeypatch)
    out = capsys.readouterr().out
    assert f"moved {old['model']}" in out  # the same model
    assert f"left {old['tokens']}: it does not match this config (path:" in out and "input text changed" in out
    assert f"left {old['store']}: it does not match this config" in out
    assert OLD in modegpt_error(["tokenize", *b], monkeypatch)  # still there: still refused
    modegpt(["migrate", *a], monkeypatch)
    assert "moved" in capsys.readouterr().out and not old["tokens"].exists() and not old["store"].exists()
    for overrides in (a, b):
        modegpt(["tokenize", *overrides], monkeypatch)
    assert ArtifactPaths(compose_config(a)).tokens != ArtifactPaths(compose_config(b)).tokens
