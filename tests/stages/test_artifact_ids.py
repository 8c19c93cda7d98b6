"""Through the CLI: calibrations differing only in their file coexist and are reused; `ls` lists them; `gc`
removes only what is named; the latest view (what dvc.yaml tracks) points at the latest run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import compose_config, modegpt, modegpt_error, tiny_overrides

from pipeline.artifacts import COMPLETE, ArtifactPaths, read_manifest

CHAIN = ("prepare", "tokenize", "capture", "solve")


def _jsonl(path: Path, word: str) -> Path:
    path.write_text("\n".join(json.dumps({"text": f"{word} text {i} " * 20}) for i in range(50)))
    return path


def _overrides(tmp_path: Path, model_dir: Path, data: Path) -> list[str]:
    return tiny_overrides(tmp_path / "outputs", model_dir, "llama", **{
        "calibration.source": "jsonl", "calibration.path": str(data), "calibration.name": "c4"})


def _stamps(paths: ArtifactPaths) -> dict[Path, tuple[float, int]]:
    """Each artifact's manifest creation time and file mtime: both unchanged when a stage reuses it."""
    out = {}
    for d in (paths.dense_model, paths.tokens, paths.store, paths.solve()):
        m = read_manifest(d)
        assert m is not None and m.status == COMPLETE, d
        out[d] = (m.created, (d / "manifest.json").stat().st_mtime_ns)
    return out


@pytest.fixture
def two_calibrations(tmp_path: Path, tiny_model_dirs, monkeypatch) -> tuple[list[str], list[str]]:
    """The chain up to solve for two calibrations that differ only in calibration.path."""
    a = _overrides(tmp_path, tiny_model_dirs["llama"], _jsonl(tmp_path / "a.jsonl", "alpha"))
    b = _overrides(tmp_path, tiny_model_dirs["llama"], _jsonl(tmp_path / "b.jsonl", "beta"))
    for overrides in (a, b):
        for stage in CHAIN:
            modegpt([stage, *overrides], monkeypatch)
    return a, b


def test_calibrations_differing_only_in_path_coexist_and_are_reused(two_calibrations, monkeypatch) -> None:
    a, b = two_calibrations
    pa, pb = ArtifactPaths(compose_config(a)), ArtifactPaths(compose_config(b))
    assert pa.tokens != pb.tokens and pa.store != pb.store and pa.solve() != pb.solve()
    before = {**_stamps(pa), **_stamps(pb)}
    pointer = pb.pointer("capture")
    assert json.loads(pointer.read_text())["path"] == str(pb.store)  # b ran last
    for overrides in (a, b):  # neither refused nor recomputed
        for stage in CHAIN:
            modegpt([stage, *overrides], monkeypatch)
    assert {**_stamps(pa), **_stamps(pb)} == before
    published = pointer.read_bytes()
    modegpt(["capture", *b], monkeypatch)
    assert pointer.read_bytes() == published  # republished unchanged: DVC sees nothing new downstream


def test_ls_lists_each_artifact_with_status_and_size(two_calibrations, monkeypatch, capsys) -> None:
    a, b = two_calibrations
    capsys.readouterr()
    modegpt(["ls", f"paths.root={ArtifactPaths(compose_config(a)).root}"], monkeypatch)
    out = capsys.readouterr().out
    for overrides in (a, b):
        paths = ArtifactPaths(compose_config(overrides))
        tokens = next(line for line in out.splitlines() if paths.tokens.relative_to(paths.root).as_posix() in line)
        assert tokens.split()[:2] == ["tokens", "complete"] and "KiB" in tokens
        assert f"{Path(paths.cfg.calibration.path).name} num_samples=8" in tokens  # what produced it
        store = next(line for line in out.splitlines() if paths.store.relative_to(paths.root).as_posix() in line)
        assert store.split()[:2] == ["store", "complete"] and "dtype=float32" in store
    assert out.count("solve ") >= 2 and "(old layout)" not in out


def test_gc_removes_only_what_is_named(two_calibrations, monkeypatch, capsys) -> None:
    a, b = two_calibrations
    pa, pb = ArtifactPaths(compose_config(a)), ArtifactPaths(compose_config(b))
    root = f"paths.root={pa.root}"
    assert "matches nothing" in modegpt_error(["gc", root, "no-such-artifact"], monkeypatch)
    assert "ambiguous" in modegpt_error(["gc", root, pa.solve().name], monkeypatch)  # the same tag in a and b
    assert "ambiguous" in modegpt_error(["gc", root, pa.model_key], monkeypatch)  # its runs and its stores
    assert "takes no option --force" in modegpt_error(["gc", root, "--force", "x"], monkeypatch)
    capsys.readouterr()
    modegpt(["gc", root, str(pb.store), "--dry-run"], monkeypatch)
    assert "would remove store" in capsys.readouterr().out and pb.store.is_dir()
    key = pb.store.relative_to(pb.root).as_posix()
    modegpt(["gc", root, key], monkeypatch)
    out = capsys.readouterr().out
    assert f"removed store {key}" in out and "capture.json (it named a removed artifact)" in out
    assert not pb.store.exists() and not pb.pointer("capture").exists()  # DVC sees the capture output gone
    assert pa.store.is_dir() and pb.tokens.is_dir() and pb.solve().is_dir()  # nothing else went
    assert "correlation store not found" in modegpt_error(["solve", *b, "compression.rate=0.3"], monkeypatch)
    modegpt(["gc", root, pb.run_root.relative_to(pb.root).as_posix()], monkeypatch)  # a whole run, by its key
    assert not pb.run_root.exists() and pa.run_root.is_dir()


def test_ls_lists_module_curves_and_gc_removes_one(two_calibrations, monkeypatch, capsys) -> None:
    a, _ = two_calibrations
    pa = ArtifactPaths(compose_config(a))
    curves = sorted(pa.solves.glob("curves-*.safetensors"))
    # the default allocation=validated made one set per unit among its candidates (kl, residual) beside the solves
    assert len(curves) == 2
    root = f"paths.root={pa.root}"
    capsys.readouterr()
    modegpt(["ls", root], monkeypatch)
    listed = capsys.readouterr().out.splitlines()
    for path in curves:
        key = path.relative_to(pa.root).as_posix()
        line = next(line for line in listed if key in line)
        assert line.split()[:2] == ["curves", "complete"] and "method=modegpt" in line
    (held,) = pa.solves.glob("heldout-*.safetensors")  # the validation's held-out windows, listed like the curves
    assert next(line for line in listed if held.name in line).split()[:2] == ["heldout", "complete"]
    key = curves[0].relative_to(pa.root).as_posix()
    modegpt(["gc", root, key], monkeypatch)
    assert f"removed curves {key}" in capsys.readouterr().out
    assert not curves[0].exists() and curves[1].exists() and pa.solve().is_dir()
