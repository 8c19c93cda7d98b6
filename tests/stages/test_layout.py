"""The on-disk layout has one owner: stages read their inputs through pipeline.artifacts, never through a stage."""

import ast
import re
from pathlib import Path

import pytest

from pipeline.artifacts import LAYERS_DIR, MANIFEST, METRICS, PLAN, TOKENS_FILE, ArtifactPaths, layer_file
from pipeline.artifacts.layout import in_current_layout

REPO = Path(__file__).resolve().parents[2]
STAGES = sorted(p for p in (REPO / "stages").glob("*.py") if p.name not in ("__init__.py", "cli.py"))
STAGE_NAMES = {p.stem for p in (REPO / "stages").glob("*.py")} - {"__init__"}


def _imported_stages(path: Path) -> list[str]:
    """The stage modules a file imports, relatively (``from .solve import x``, ``from . import solve``) or not."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "stages"]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 0 and module.split(".")[0] != "stages":
                continue
            if node.level > 1:
                continue  # above stages/: not a stage
            parts = module.split(".") if module else []
            if node.level == 0:
                parts = parts[1:]  # drop "stages"
            if parts and parts[0]:
                found.append(f"stages.{parts[0]}")
            else:  # `from . import solve` / `from stages import solve`
                found += [f"stages.{a.name}" for a in node.names if a.name in STAGE_NAMES]
    return found


def test_stages_are_found() -> None:
    assert {p.stem for p in STAGES} >= {"prepare", "tokenize", "capture", "solve", "assemble", "evaluate", "report"}


@pytest.mark.parametrize("path", STAGES, ids=lambda p: p.name)
def test_no_stage_imports_another_stage(path: Path) -> None:
    assert _imported_stages(path) == [], f"{path.name} imports a stage: read the artifact via pipeline.artifacts"


def test_the_import_check_sees_every_form(tmp_path: Path) -> None:
    src = tmp_path / "x.py"
    src.write_text("from .solve import a\nfrom . import capture\nimport stages.tokenize\n"
                   "from stages.assemble import b\nfrom stages import evaluate\nfrom pipeline.artifacts import c\n"
                   "from .. import pipeline\n")
    assert _imported_stages(src) == ["stages.solve", "stages.capture", "stages.tokenize", "stages.assemble",
                                     "stages.evaluate"]


@pytest.mark.parametrize("name", [MANIFEST, TOKENS_FILE, PLAN, METRICS])
@pytest.mark.parametrize("folder", ["stages", "benchmarks"])
def test_artifact_file_names_are_not_typed_outside_the_layout(folder: str, name: str) -> None:
    typed = [p.name for p in sorted((REPO / folder).glob("*.py"))
             if f'"{name}"' in p.read_text(encoding="utf-8") or f"'{name}'" in p.read_text(encoding="utf-8")]
    assert typed == [], f"{typed} spell {name!r}: use the constant from pipeline.artifacts"


def test_file_names_and_paths_are_unchanged(tiny_cfg) -> None:
    """Renaming any of these strands every user's artifacts."""
    assert (MANIFEST, TOKENS_FILE, PLAN, METRICS, LAYERS_DIR) == (
        "manifest.json", "tokens.safetensors", "plan.json", "metrics.json", "layers")
    paths = ArtifactPaths(tiny_cfg)
    hex8 = "[0-9a-f]{8}"
    assert re.fullmatch(rf"tiny-{tiny_cfg.model.family}-{hex8}", paths.model_key)
    assert re.fullmatch(rf"boolq-8x32-seed0-{hex8}", paths.calibration_key)
    assert re.fullmatch(rf"tiny-{tiny_cfg.model.family}-{hex8}", paths.dense_model.name)
    assert paths.dense_model.parent == paths.root / "models"
    run_root = paths.model_root / f"{paths.calibration_key}-float32"
    assert paths.store == paths.store_root / paths.model_key / run_root.name
    assert layer_file(paths.solve(), 7) == run_root / "solve" / paths.compression_tag() / "layers" / "00007.safetensors"
    assert paths.plan() == run_root / "solve" / paths.compression_tag() / "plan.json"
    assert paths.tokens_file == paths.model_root / "calib" / paths.calibration_key / "tokens.safetensors"
    assert paths.evaluation() == run_root / "eval" / paths.eval_tag / paths.compression_tag()
    assert paths.rate_metrics(0.25) == run_root / "metrics" / "r0.25.json"
    assert paths.compression_tag(0.25).split("-")[2] == "r0.25"
    latest = paths.root / "latest" / f"tiny-{tiny_cfg.model.family}" / "boolq-8x32-seed0"
    assert (paths.pointer("prepare"), paths.pointer("capture")) == (latest.parent / "prepare.json",
                                                                   latest / "capture.json")
    assert paths.latest_metrics(0.25) == latest / "metrics" / "r0.25.json" and paths.latest_report == latest / "report"
    for kind, path in (("model", paths.dense_model), ("tokens", paths.tokens), ("solve", paths.solve()),
                       ("checkpoint", paths.checkpoint()), ("eval", paths.evaluation()),
                       ("eval", paths.dense_evaluation), ("report", paths.report)):
        assert in_current_layout(kind, path.relative_to(paths.root).as_posix()), kind
    assert in_current_layout("store", paths.store.relative_to(paths.store_root).as_posix())
    for kind, path in paths.old_layout().items():  # where the same config's artifacts were before the fingerprints
        assert not in_current_layout(kind, path.relative_to(paths.root).as_posix())


def test_every_stage_module_is_a_named_stage_and_back() -> None:
    """One list of stages (pipeline.artifacts.expected.STAGES): the CLI and `overwrite=[...]` derive from it."""
    from pipeline.artifacts.expected import STAGES
    from stages.cli import COMMANDS, stage_names

    modules = {p.stem for p in (REPO / "stages").glob("*.py")} - {"__init__", "cli"}
    assert set(STAGES) == modules
    assert stage_names() == [*STAGES, "run"]
    assert not set(COMMANDS) & {*stage_names(), *modules}  # ls, gc, migrate are commands, not stages
