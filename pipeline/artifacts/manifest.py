"""Manifests: what produced an artifact, and whether a stage may reuse, resume or must refuse it.

Every artifact is a directory holding a ``manifest.json`` (what produced it: stage, the config subset it
depends on, the fingerprints of its inputs, the stage's code version, status). Its fingerprint hashes all
of that except status, so a stage can tell a current artifact (reuse), an unfinished one of the same job
(resume) and one produced by anything else (refuse) apart.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .atomic import atomic_write_json, fingerprint
from .layout import MANIFEST

log = logging.getLogger("pipeline.artifacts")

COMPLETE = "complete"
PARTIAL = "partial"


class ArtifactError(RuntimeError):
    """An artifact is missing, incomplete, corrupted or was produced by something else."""


def read_json(path: str | os.PathLike[str]) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}): the file is corrupted") from e


@dataclass
class Manifest:
    stage: str
    code_version: str
    config: dict[str, Any]
    inputs: dict[str, str] = field(default_factory=dict)  # input name -> fingerprint
    status: str = PARTIAL
    created: float = field(default_factory=time.time)
    extra: dict[str, Any] = field(default_factory=dict)  # results and facts; not fingerprinted

    @property
    def fingerprint(self) -> str:
        return fingerprint(
            {"stage": self.stage, "code_version": self.code_version, "config": self.config, "inputs": self.inputs}
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "fingerprint": self.fingerprint,
            "code_version": self.code_version,
            "config": self.config,
            "inputs": self.inputs,
            "status": self.status,
            "created": self.created,
            "extra": self.extra,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Manifest:
        return cls(
            stage=d["stage"],
            code_version=d["code_version"],
            config=d["config"],
            inputs=d.get("inputs", {}),
            status=d.get("status", PARTIAL),
            created=d.get("created", 0.0),
            extra=d.get("extra", {}),
        )


def manifest_path(artifact_dir: str | os.PathLike[str]) -> Path:
    return Path(artifact_dir) / MANIFEST


def read_manifest(artifact_dir: str | os.PathLike[str]) -> Manifest | None:
    p = manifest_path(artifact_dir)
    if not p.exists():
        return None
    data = read_json(p)
    try:
        return Manifest.from_json(data)
    except KeyError as e:
        raise ArtifactError(f"{p} lacks the field {e}: not a manifest this project wrote") from e


def write_manifest(artifact_dir: str | os.PathLike[str], manifest: Manifest) -> None:
    atomic_write_json(manifest_path(artifact_dir), manifest.to_json())


def artifact_state(artifact_dir: str | os.PathLike[str], expected: Manifest) -> str:
    """'missing' | 'complete' | 'partial' (same job, unfinished) | 'mismatch' (produced by something else)."""
    found = read_manifest(artifact_dir)
    if found is None:
        return "partial" if Path(artifact_dir).exists() and any(Path(artifact_dir).iterdir()) else "missing"
    if found.fingerprint != expected.fingerprint:
        return "mismatch"
    return "complete" if found.status == COMPLETE else "partial"


def describe_mismatch(artifact_dir: str | os.PathLike[str], expected: Manifest) -> str:
    found = read_manifest(artifact_dir)
    if found is None:
        return f"{artifact_dir} holds files but no manifest"
    diffs = []
    if found.stage != expected.stage:
        diffs.append(f"stage {found.stage!r} != {expected.stage!r}")
    if found.code_version != expected.code_version:
        diffs.append(f"code version {found.code_version!r} != {expected.code_version!r}")
    for key in sorted(set(found.config) | set(expected.config)):
        if found.config.get(key) != expected.config.get(key):
            diffs.append(f"{key}: {found.config.get(key)!r} != {expected.config.get(key)!r}")
    for key in sorted(set(found.inputs) | set(expected.inputs)):
        if found.inputs.get(key) != expected.inputs.get(key):
            diffs.append(f"input {key} changed")
    return "; ".join(diffs) or "fingerprints differ"


def require_complete(artifact_dir: str | os.PathLike[str], stage: str, what: str) -> Manifest:
    """Read the manifest of an input artifact, refusing a missing, foreign or unfinished one."""
    found = read_manifest(artifact_dir)
    if found is None:
        raise ArtifactError(f"{what} not found at {artifact_dir}: run `modegpt {stage}` first")
    if found.stage != stage:
        raise ArtifactError(f"{artifact_dir} was written by stage {found.stage!r}, expected {stage!r}")
    if found.status != COMPLETE:
        raise ArtifactError(f"{what} at {artifact_dir} is incomplete: rerun `modegpt {stage}` to finish it")
    return found


def overwrites(overwrite: Collection[str], stage: str) -> bool:
    """Whether ``overwrite`` (stage names, or ``all``) asks to recompute ``stage``'s artifacts."""
    return stage in overwrite or "all" in overwrite


def prepare_output(artifact_dir: str | os.PathLike[str], expected: Manifest, overwrite: Collection[str]) -> str:
    """Decide what a stage does with its output directory; returns 'skip', 'resume' or 'fresh'.

    A mismatched artifact is never silently reused nor silently deleted: it needs ``overwrite=[<stage>]``.
    """
    state = artifact_state(artifact_dir, expected)
    if overwrites(overwrite, expected.stage) and state != "missing":
        log.info("overwrite=[%s]: removing %s", expected.stage, artifact_dir)
        shutil.rmtree(artifact_dir)
        return "fresh"
    if state == "complete":
        return "skip"
    if state == "mismatch":
        raise ArtifactError(
            f"{artifact_dir} was produced by a different job ({describe_mismatch(artifact_dir, expected)}); "
            f"remove it or rerun with overwrite=[{expected.stage}]"
        )
    if state == "partial":
        return "resume"
    return "fresh"
