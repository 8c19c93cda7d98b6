"""A solve after a changed probe or curves version is recomputed in a directory of its own, never reused."""

from conftest import compose_config, tiny_overrides

from pipeline import solve_identity
from pipeline.artifacts import read_manifest
from pipeline.methods.modegpt import probe
from stages import capture, solve, tokenize


def test_a_new_probe_version_recomputes_the_solve(tmp_path, tiny_model_dirs, monkeypatch) -> None:
    cfg = compose_config(tiny_overrides(tmp_path, tiny_model_dirs["llama"], "llama", **{
        "compression.allocation": "error", "compression.curve_scale": "kl"}))
    tokenize.run(cfg)
    capture.run(cfg)
    first = solve.run(cfg)
    assert solve.run(cfg) == first  # current: reused
    probed = []
    real = probe.kl_sensitivity
    monkeypatch.setattr(probe, "kl_sensitivity", lambda *a, **k: probed.append(1) or real(*a, **k))
    monkeypatch.setattr(solve_identity, "PROBE_VERSION", solve_identity.PROBE_VERSION + 1)
    second = solve.run(cfg)
    assert second != first and probed == [1]
    assert read_manifest(second).status == "complete" and read_manifest(first).status == "complete"
    assert read_manifest(second).config["curves"]["probe"]["version"] == solve_identity.PROBE_VERSION
