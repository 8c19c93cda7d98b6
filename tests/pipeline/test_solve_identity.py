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
from pipeline.config import CompressionConfig

REPO = Path(__file__).resolve().parents[2]
FIELDS = [f.name for f in dataclasses.fields(CompressionConfig) if f.name != "rates"]


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


@pytest.mark.parametrize("group", ["default", "paper"])
def test_compression_yamls_set_every_schema_field(group) -> None:
    doc = yaml.safe_load((REPO / "conf" / "compression" / f"{group}.yaml").read_text())
    assert set(doc) - {"defaults"} == {f.name for f in dataclasses.fields(CompressionConfig)}


def test_dvc_compress_stage_lists_every_compression_field_it_reads() -> None:
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    params = dvc["stages"]["compress"]["do"]["params"]
    listed = {p.removeprefix("compression.") for p in params if isinstance(p, str) and p.startswith("compression.")}
    assert listed == set(FIELDS) - {"rate"}  # the rate comes from the foreach item
    assert "export" in params and "eval" in params


def test_retired_fields_stay_in_the_keys_at_the_value_that_stayed() -> None:
    """What was solved before an option was retired keeps its name: the keys hold each retired field at the value the
    code left computes (solve_identity.RETIRED_FIELDS), none of them in the schema any more."""
    k = compose_config(["compression.allocation=error"]).compression
    fields = solve_identity.compression_fields(k)
    assert {n: fields[n] for n in solve_identity.RETIRED_FIELDS} == {
        "mlp_selection": "leverage", "sequential_target": "layer", "fisher_mix": 0.0}
    assert not set(solve_identity.RETIRED_FIELDS) & set(FIELDS)
    assert solve_identity.curves_key(k)["compression"]["mlp_selection"] == "leverage"
