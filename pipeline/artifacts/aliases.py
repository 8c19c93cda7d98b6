"""The latest view, ``<root>/latest/<model>/<calibration>-<N>x<L>-seed<S>/``: config-named paths to the latest run.

Artifact directories carry fingerprints that dvc.yaml cannot template; these paths it can. The CLI publishes them
after each stage (stages write only their own artifacts): a ``<stage>.json`` pointer for the big artifacts (dense
model, tokens, store) and copies of the small ones (each rate's metrics, the report). A pointer holds the
artifact's path, fingerprint and status and no time, so republishing an unchanged artifact leaves its bytes as
they were and DVC reruns nothing downstream; and DVC hashes a pointer, not a 500 GiB store.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .atomic import atomic_dir, atomic_write_text
from .expected import ASSEMBLE, CAPTURE, EVALUATE, EXPORT, PREPARE, REPORT, TOKENIZE
from .layout import LATEST, ArtifactPaths
from .manifest import read_manifest

# Fields of a latest-view file that name the artifact it stands for (pointers; a rate's metrics).
REFERENCE_FIELDS = ("path", "checkpoint")
# Stages whose latest artifact is also a symlink beside its pointer, for people to open: latest/.../checkpoint/
# (the transformers folder) and latest/.../export/ (the engines' files)
LINKS = {ASSEMBLE: "checkpoint", EXPORT: "export"}


def _pointed(paths: ArtifactPaths, stage: str) -> Path | None:
    return {PREPARE: paths.dense_model, TOKENIZE: paths.tokens, CAPTURE: paths.store, ASSEMBLE: paths.checkpoint(),
            EXPORT: paths.export()}.get(stage)


def _write_if_changed(target: Path, text: str) -> None:
    if not target.is_file() or target.read_text(encoding="utf-8") != text:
        atomic_write_text(target, text)


def pointer_text(artifact: Path, stage: str) -> str | None:
    manifest = read_manifest(artifact)
    if manifest is None:
        return None
    doc = {"stage": stage, "path": str(artifact), "fingerprint": manifest.fingerprint, "status": manifest.status}
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def publish(cfg: Any, stage: str) -> None:
    """Point the latest view at what ``stage`` just produced or reused for ``cfg``."""
    paths = ArtifactPaths(cfg)
    artifact = _pointed(paths, stage)
    if artifact is not None:
        text = pointer_text(artifact, stage)
        if text is not None:
            _write_if_changed(paths.pointer(stage), text)
            if stage in LINKS:
                _link(paths.pointer(stage).with_name(LINKS[stage]), artifact)
    elif stage == EVALUATE and paths.rate_metrics().is_file():
        _write_if_changed(paths.latest_metrics(), paths.rate_metrics().read_text(encoding="utf-8"))
    elif stage == REPORT and paths.report.is_dir():
        with atomic_dir(paths.latest_report) as tmp:
            for f in sorted(paths.report.iterdir()):
                if f.is_file() and not f.name.startswith("."):
                    shutil.copyfile(f, tmp / f.name)


def _link(link: Path, target: Path) -> None:
    """``link`` -> ``target`` (absolute), replaced atomically when it pointed elsewhere."""
    target = Path(os.path.abspath(target))
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return
    temp = link.with_name(f".{link.name}.tmp")
    temp.unlink(missing_ok=True)
    os.symlink(target, temp, target_is_directory=True)
    os.replace(temp, link)


def _references(view: Path) -> list[Path]:
    if view.is_symlink():
        return [Path(os.readlink(view))]
    try:
        doc = json.loads(view.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(doc, dict):
        return []
    return [Path(doc[k]) for k in REFERENCE_FIELDS if isinstance(doc.get(k), str)]


def _within(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def views_of(root: Path, removed: Iterable[Path]) -> list[Path]:
    """Latest-view files that name something under ``removed`` (gc drops them, so DVC sees the output gone)."""
    latest = root / LATEST
    if not latest.is_dir():
        return []
    gone = [Path(os.path.abspath(p)) for p in removed]
    found = []
    links = [p for p in latest.rglob("*") if p.is_symlink()]
    for view in sorted([*latest.rglob("*.json"), *links]):
        refs = [Path(os.path.abspath(r)) for r in _references(view)]
        if any(_within(r, g) for r in refs for g in gone):
            found.append(view)
    return found
