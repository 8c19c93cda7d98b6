"""A solve's identity is derived from everything it reads: every compression field (walked from the schema, so a
new field cannot be left out), the code versions and settings of the curves and probe behind its plan; and the
hand-written views of the schema (the compression YAMLs, dvc.yaml's params) agree with it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from conftest import compose_config, tiny_overrides
from omegaconf import ListConfig

from pipeline import solve_identity
from pipeline.artifacts import ArtifactPaths, expected_solve
from pipeline.config import compression_schema

REPO = Path(__file__).resolve().parents[2]
FIELDS = [f.name for f in dataclasses.fields(compression_schema()) if f.name != "rates"]


def _another(value):
    if isinstance(value, bool):
        return str(not value).lower()
    if value is None:
        return "7"
    if isinstance(value, int):
        return str(value + 1)
    if isinstance(value, float):
        return str(round(value * 0.5 + 0.01, 6))
    if isinstance(value, list | ListConfig):
        return "[" + ",".join(value[:-1] if len(value) > 1 else ["bi", *value]) + "]"
    return f"{value}-changed"


def _solve_identity(tmp_path: Path, model_dir: Path, *overrides: str) -> tuple[Path, str]:
    cfg = compose_config([*tiny_overrides(tmp_path, model_dir, "llama"), *overrides])
    return ArtifactPaths(cfg).solve(), expected_solve(cfg, "store").fingerprint


@pytest.mark.parametrize("name", FIELDS)
def test_every_compression_field_names_another_solve(tmp_path, tiny_model_dirs, name) -> None:
    base_cfg = compose_config(tiny_overrides(tmp_path, tiny_model_dirs["llama"], "llama"))
    base = _solve_identity(tmp_path, tiny_model_dirs["llama"])
    changed = _solve_identity(tmp_path, tiny_model_dirs["llama"],
                              f"compression.{name}={_another(base_cfg.compression[name])}")
    assert changed[0] != base[0] and changed[1] != base[1], name


def test_the_sweep_list_names_no_other_solve(tmp_path, tiny_model_dirs) -> None:
    base = _solve_identity(tmp_path, tiny_model_dirs["llama"])
    assert _solve_identity(tmp_path, tiny_model_dirs["llama"], "compression.rates=[0.5]") == base
    assert _solve_identity(tmp_path, tiny_model_dirs["llama"], "calibration.batch_size=1") == base


@pytest.mark.parametrize("version", ["PROBE_VERSION", "CURVES_VERSION", "PROBE_POSITIONS", "PROBE_SEED",
                                     "PLAN_VERSION"])
def test_a_probe_or_curves_change_names_another_solve(tmp_path, tiny_model_dirs, monkeypatch, version) -> None:
    probed = ("compression.allocation=error", "compression.curve_scale=kl")
    base = _solve_identity(tmp_path, tiny_model_dirs["llama"], *probed)
    monkeypatch.setattr(solve_identity, version, getattr(solve_identity, version) + 1)
    assert _solve_identity(tmp_path, tiny_model_dirs["llama"], *probed)[0] != base[0]


def test_the_probe_is_shared_by_solver_settings_but_not_by_probe_settings(monkeypatch) -> None:
    cfg = compose_config(["compression.allocation=error", "compression.curve_scale=kl"])
    other_solver = compose_config(["compression.allocation=error", "compression.curve_scale=kl",
                                   "compression.ridge_lambda=0.5"])
    assert solve_identity.probe_key(cfg.compression) == solve_identity.probe_key(other_solver.compression)
    assert solve_identity.curves_key(cfg.compression) != solve_identity.curves_key(other_solver.compression)
    assert solve_identity.probe_key(compose_config(["compression.curve_scale=residual"]).compression) is None


def test_validation_fields_name_another_solve_but_share_the_candidates_curves(tmp_path, tiny_model_dirs,
                                                                               monkeypatch) -> None:
    validated = ("compression.allocation=validated", "compression.candidates=[kl,residual,bi]")
    base = _solve_identity(tmp_path, tiny_model_dirs["llama"], *validated)
    monkeypatch.setattr(solve_identity, "VALIDATION_VERSION", solve_identity.VALIDATION_VERSION + 1)
    assert _solve_identity(tmp_path, tiny_model_dirs["llama"], *validated)[0] != base[0]
    k = compose_config(list(validated)).compression
    fewer = compose_config(["compression.allocation=validated", "compression.candidates=[kl]",
                            "compression.validation_sequences=3"]).compression
    plain = compose_config(["compression.allocation=error", "compression.curve_scale=kl"]).compression
    kl = solve_identity.curves_key(solve_identity.candidate(k, "kl"))
    assert kl == solve_identity.curves_key(solve_identity.candidate(fewer, "kl")) == solve_identity.curves_key(plain)
    assert solve_identity.candidate(k, "bi").allocation == "bi"


def test_the_schema_is_the_default_and_paper_sets_only_schema_fields() -> None:
    default = yaml.safe_load((REPO / "conf" / "compression" / "default.yaml").read_text())
    paper = yaml.safe_load((REPO / "conf" / "compression" / "paper.yaml").read_text())
    assert set(default) == {"defaults"}  # the default's values are the schema's: declared once
    assert set(paper) - {"defaults"} <= set(FIELDS)


def test_method_settings_are_compression_fields() -> None:
    from pipeline.methods import METHODS

    for method in METHODS.values():
        for f in method.settings_type.config_fields():
            assert f.name in FIELDS, f"{method.settings_type.__name__}.{f.name} is missing from the schema"
    assert "round_to" in FIELDS and "curve_scale" in FIELDS and "eig_floor" in FIELDS


def test_dvc_compress_stage_tracks_the_whole_compression_group() -> None:
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    params = dvc["stages"]["compress"]["do"]["params"]
    assert "compression" in params  # every field, including one added later, is a param of the stage
