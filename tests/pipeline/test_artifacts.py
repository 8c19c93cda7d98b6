from pathlib import Path

import pytest

from pipeline.artifacts import (
    COMPLETE,
    ArtifactError,
    Manifest,
    artifact_state,
    atomic_dir,
    atomic_write_json,
    fingerprint,
    prepare_output,
    read_json,
    require_complete,
    write_manifest,
)


def _manifest(**config: object) -> Manifest:
    return Manifest(stage="demo", code_version="demo-1", config=dict(config), inputs={"x": "abc"})


def test_fingerprint_is_order_independent_and_sensitive() -> None:
    assert fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
    assert _manifest(rate=0.1).fingerprint != _manifest(rate=0.2).fingerprint
    m = _manifest(rate=0.1)
    before = m.fingerprint
    m.status, m.extra = COMPLETE, {"seconds": 3}
    assert m.fingerprint == before  # status and results are not part of what produced it


def test_states_and_prepare_output(tmp_path: Path) -> None:
    d = tmp_path / "art"
    m = _manifest(rate=0.1)
    assert artifact_state(d, m) == "missing" and prepare_output(d, m, overwrite=[]) == "fresh"
    d.mkdir()
    write_manifest(d, m)
    assert prepare_output(d, m, overwrite=[]) == "resume"
    m.status = COMPLETE
    write_manifest(d, m)
    assert prepare_output(d, m, overwrite=[]) == "skip"
    other = _manifest(rate=0.2)
    with pytest.raises(ArtifactError, match="rate: 0.1 != 0.2"):
        prepare_output(d, other, overwrite=[])
    assert d.exists()  # refused, nothing deleted
    with pytest.raises(ArtifactError, match=r"overwrite=\[demo\]"):
        prepare_output(d, other, overwrite=["solve"])  # only the named stages are recomputed
    assert prepare_output(d, other, overwrite=["demo"]) == "fresh" and not d.exists()


def test_require_complete_refuses_missing_foreign_and_partial(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="not found"):
        require_complete(tmp_path / "none", "demo", "thing")
    d = tmp_path / "a"
    d.mkdir()
    m = _manifest()
    write_manifest(d, m)
    with pytest.raises(ArtifactError, match="incomplete"):
        require_complete(d, "demo", "thing")
    with pytest.raises(ArtifactError, match="written by stage 'demo'"):
        require_complete(d, "other", "thing")


def test_atomic_dir_leaves_nothing_on_failure_and_replaces_on_success(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("killed")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("1")
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_corrupted_json_is_reported(tmp_path: Path) -> None:
    p = tmp_path / "m.json"
    atomic_write_json(p, {"a": 1})
    assert read_json(p) == {"a": 1}
    p.write_text('{"a": ')
    with pytest.raises(ArtifactError, match="corrupted"):
        read_json(p)


def test_remove_stale_temps_deletes_only_atomic_path_leftovers(tmp_path) -> None:
    from pipeline.artifacts import atomic_path, remove_stale_temps

    with atomic_path(tmp_path / "plot.png") as tmp:
        tmp.write_bytes(b"kept")
    (tmp_path / ".plot.png.abc123.tmp").write_bytes(b"torn")  # what a SIGKILL mid-write leaves
    (tmp_path / "notes.tmp").write_bytes(b"not ours")
    remove_stale_temps(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.tmp", "plot.png"]
