"""Assemble stage: rate 0 reproduces the dense model; saved == in-memory; refusals; kill -9 and rerun."""

from pathlib import Path

import pytest
import torch
from conftest import FAMILIES, compose_config, run_killed, tiny_overrides
from transformers import AutoModelForCausalLM

from pipeline.adapters import adapter_for
from pipeline.artifacts import ArtifactError, ArtifactPaths, expected, read_manifest, write_manifest
from pipeline.assembly import build_compressed_model, count_parameters
from pipeline.dense import load_model
from pipeline.readers import checkpoint_dir, load_solution
from stages import assemble, capture, solve, tokenize

REPO = Path(__file__).resolve().parents[2]


def _solved(tmp_path: Path, model_dir: Path, family: str, rate: float) -> list[str]:
    overrides = [*tiny_overrides(tmp_path, model_dir, family), f"compression.rate={rate}"]
    cfg = compose_config(overrides)
    for stage in (tokenize, capture, solve):
        stage.run(cfg)
    return overrides


@pytest.mark.parametrize("family", FAMILIES)
def test_rate_zero_reproduces_dense_logits(tmp_path, tiny_model_dirs, family) -> None:
    cfg = compose_config(_solved(tmp_path, tiny_model_dirs[family], family, 0.0))
    target = assemble.run(cfg)
    dense = load_model(cfg, ArtifactPaths(cfg).dense_model)
    compressed = AutoModelForCausalLM.from_pretrained(target).eval()
    ids = torch.randint(0, 256, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(compressed(ids).logits, dense(ids).logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_saved_checkpoint_equals_in_memory_model_and_generates(tmp_path, tiny_model_dirs, family) -> None:
    cfg = compose_config(_solved(tmp_path, tiny_model_dirs[family], family, 0.3))
    target = assemble.run(cfg)
    manifest = read_manifest(target)
    dense = load_model(cfg, ArtifactPaths(cfg).dense_model)
    plans, solutions, _ = load_solution(cfg)
    in_memory = build_compressed_model(dense, adapter_for(dense, family), plans, solutions)
    saved = AutoModelForCausalLM.from_pretrained(target).eval()
    assert type(saved).__name__.startswith("ModeGPT")
    assert count_parameters(saved) == manifest.extra["compressed_params"] < manifest.extra["dense_params"]
    assert abs(manifest.extra["achieved_block_rate"] - 0.3) < 0.05
    ids = torch.randint(0, 256, (1, 16))
    with torch.no_grad():
        assert torch.equal(saved(ids).logits, in_memory(ids).logits)
    out = saved.generate(ids, max_new_tokens=6, do_sample=False)
    no_cache = saved.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False)
    assert out.shape == (1, 22) and torch.equal(out, no_cache)
    assert (target / "modeling_modegpt.py").is_file() and "auto_map" in (target / "config.json").read_text()


def test_incomplete_or_foreign_solve_is_refused(tmp_path, tiny_model_dirs, monkeypatch) -> None:
    overrides = _solved(tmp_path, tiny_model_dirs["llama"], "llama", 0.2)
    cfg = compose_config(overrides)
    solve_dir = ArtifactPaths(cfg).solve()
    manifest = read_manifest(solve_dir)
    manifest.status = "partial"
    write_manifest(solve_dir, manifest)
    with pytest.raises(ArtifactError, match="incomplete"):
        assemble.run(cfg)
    manifest.status = "complete"
    write_manifest(solve_dir, manifest)
    monkeypatch.setattr(expected, "SOLVE_VERSION", "solve-0")  # the solve on disk is no longer current
    with pytest.raises(ArtifactError, match="another model, store or solver config .*code version"):
        assemble.run(cfg)


def test_kill_during_assemble_then_rerun_is_byte_identical(tmp_path, tiny_model_dirs) -> None:
    ref = _solved(tmp_path / "ref", tiny_model_dirs["opt"], "opt", 0.25)
    killed = _solved(tmp_path / "killed", tiny_model_dirs["opt"], "opt", 0.25)
    ref_dir = assemble.run(compose_config(ref))
    # dies right after the checkpoint files are written, before the directory is renamed into place
    assert run_killed("assemble", "stages.assemble", "save_compressed", killed) == -9
    cfg = compose_config(killed)
    target = ArtifactPaths(cfg).checkpoint()
    assert not target.exists()  # nothing half-written in place
    with pytest.raises(ArtifactError, match="not found"):
        checkpoint_dir(cfg)
    assemble.run(cfg)
    assert (target / "model.safetensors").read_bytes() == (ref_dir / "model.safetensors").read_bytes()
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # the killed run's temp dir is gone
