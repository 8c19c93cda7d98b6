"""The committed params.yaml is the composed default config, and dvc.yaml's templated paths match the code's."""

from pathlib import Path

import yaml
from conftest import compose_config
from omegaconf import OmegaConf

from pipeline.artifacts import ArtifactPaths

REPO = Path(__file__).resolve().parents[1]


def test_params_yaml_is_the_composed_default() -> None:
    committed = yaml.safe_load((REPO / "params.yaml").read_text())
    composed = OmegaConf.to_container(compose_config(), resolve=True)
    assert committed == composed, "params.yaml is stale: run `make params.yaml`"


def test_dvc_paths_match_artifact_paths() -> None:
    """DVC tracks the latest view (config-named pointers and copies), the only paths it can template."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    dvc = (REPO / "dvc.yaml").read_text()
    key = "${calibration.name}-${calibration.num_samples}x${calibration.seq_len}-seed${calibration.seed}"

    def render(template: str) -> str:
        flat = {"paths.root": params["paths"]["root"], "paths.store_root": params["paths"]["store_root"],
                "model.name": params["model"]["name"], "item": "0.25"}
        c = params["calibration"]
        template = template.replace(key, f"{c['name']}-{c['num_samples']}x{c['seq_len']}-seed{c['seed']}")
        for k, v in flat.items():
            template = template.replace("${" + k + "}", str(v))
        return template

    paths = ArtifactPaths(compose_config())
    expected = {paths.pointer("prepare"), paths.pointer("tokenize"), paths.pointer("capture"),
                paths.latest_metrics(0.25), paths.latest_report / "report.md"}
    declared = {render(ln.strip().lstrip("- ").rstrip(":")) for ln in dvc.splitlines()
                if ln.strip().startswith("- ${paths")}
    for p in expected:
        assert str(p) in declared, f"dvc.yaml declares no path rendering to {p}"
    assert all("/latest/" in p for p in declared), "DVC can only template the latest view's paths"
