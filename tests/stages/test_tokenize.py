import json
from pathlib import Path

import pytest
import torch
from conftest import compose_config, tiny_overrides

from pipeline.artifacts import TOKENS_FILE, ArtifactError, ArtifactPaths, expected
from pipeline.calibration import CalibrationError, sample_windows
from pipeline.readers import load_tokens
from stages import tokenize


def test_tokenize_writes_seeded_windows_once(tiny_cfg) -> None:
    path = tokenize.run(tiny_cfg)
    ids, manifest = load_tokens(tiny_cfg)
    assert ids.shape == (8, 32) and ids.dtype == torch.long
    assert manifest.status == "complete" and manifest.extra["stream_tokens"] > 8 * 32
    mtime = (path / TOKENS_FILE).stat().st_mtime_ns
    tokenize.run(tiny_cfg)  # current: skipped, not rewritten
    assert (path / TOKENS_FILE).stat().st_mtime_ns == mtime


def test_seed_controls_the_sample(tmp_path: Path, tiny_model_dirs) -> None:
    base = tiny_overrides(tmp_path, tiny_model_dirs["llama"], "llama")
    a = compose_config(base)
    b = compose_config([*base, "calibration.seed=1"])
    tokenize.run(a)
    tokenize.run(b)
    ids_a, ids_b = load_tokens(a)[0], load_tokens(b)[0]
    assert not torch.equal(ids_a, ids_b)
    again = compose_config([*base, "paths.root=" + str(tmp_path / "again")])
    tokenize.run(again)
    assert torch.equal(load_tokens(again)[0], ids_a)


def test_windows_do_not_overlap_and_short_sets_are_refused() -> None:
    stream = torch.arange(100)
    w = sample_windows(stream, 4, 10, seed=0)
    assert len(set(w.flatten().tolist())) == 40
    with pytest.raises(CalibrationError, match="shorter than asked: 100 tokens give 10 windows of 10"):
        sample_windows(stream, 11, 10, seed=0)


def test_too_many_samples_is_a_clear_error(tmp_path: Path, tiny_model_dirs) -> None:
    cfg = compose_config(tiny_overrides(tmp_path, tiny_model_dirs["opt"], "opt", **{"calibration.num_samples": 10**6}))
    with pytest.raises(CalibrationError, match="calibration.num_samples=1000000"):
        tokenize.run(cfg)
    assert not ArtifactPaths(cfg).tokens.exists()


def test_local_jsonl_source_changed_text_and_stale_refusal(tmp_path: Path, tiny_model_dirs, monkeypatch) -> None:
    data = tmp_path / "c4.jsonl"
    data.write_text("\n".join(json.dumps({"text": f"sample text {i} " * 20}) for i in range(50)))
    over = {"calibration.source": "jsonl", "calibration.path": str(data), "calibration.name": "c4"}
    cfg = compose_config(tiny_overrides(tmp_path, tiny_model_dirs["llama"], "llama", **over))
    first = tokenize.run(cfg)
    assert load_tokens(cfg)[0].shape == (8, 32)
    data.write_text(data.read_text() + '\n{"text": "more"}')  # the source changed: another artifact, no conflict
    with pytest.raises(ArtifactError, match="calibration tokens not found"):
        load_tokens(cfg)
    second = tokenize.run(cfg)
    assert second != first and first.is_dir() and second.parent == first.parent
    assert second.name.startswith("c4-8x32-seed0-") and first.name.startswith("c4-8x32-seed0-")
    monkeypatch.setattr(expected, "TOKENIZE_VERSION", "tokenize-0")  # in place, only a code change can differ
    with pytest.raises(ArtifactError, match="do not match this config .*code version"):
        load_tokens(cfg)
    with pytest.raises(ArtifactError, match=r"overwrite=\[tokenize\]"):
        tokenize.run(cfg)
