"""Artifact paths, manifests, fingerprints and atomic writes: the one module that owns on-disk layout.

Every artifact is a directory holding a ``manifest.json`` (what produced it: stage, the config subset it
depends on, the fingerprints of its inputs, the stage's code version, status). Its fingerprint hashes all
of that except status, so a stage can tell a current artifact (reuse), an unfinished one of the same job
(resume) and one produced by anything else (refuse) apart.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
COMPLETE = "complete"
PARTIAL = "partial"


class ArtifactError(RuntimeError):
    """An artifact is missing, incomplete, corrupted or was produced by something else."""


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def fingerprint(obj: Any) -> str:
    """Short, stable hash of a JSON-able object (dict key order does not matter)."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:16]


def file_digest(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside ``target``; rename it onto ``target`` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; artifacts are ordinary files
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, target)
        _fsync_dir(target.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(target: str | os.PathLike[str], text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(target: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(target, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}): the file is corrupted") from e


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a whole directory in a temp sibling and rename it into place when the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.*.tmp"):  # left by a killed earlier run
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if target.exists():
            # Replacing a stale artifact: move it aside first so the swap is one rename.
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


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


def _rate_tag(rate: float) -> str:
    return f"r{rate:.3f}".rstrip("0").rstrip(".")


class ArtifactPaths:
    """Where each stage's artifact lives, derived from config keys only (never from Hydra's run dir)."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.root = Path(cfg.paths.root)
        self.store_root = Path(cfg.paths.store_root) if cfg.paths.store_root else self.root / "stores"

    @property
    def model_root(self) -> Path:
        return self.root / self.cfg.model.name

    @property
    def calibration_key(self) -> str:
        c = self.cfg.calibration
        return f"{c.name}-{c.num_samples}x{c.seq_len}-seed{c.seed}"

    @property
    def dense_model(self) -> Path:
        """The dense model as a plain HF folder (only for sources that need converting, e.g. GGUF)."""
        return self.root / "models" / self.cfg.model.name

    @property
    def tokens(self) -> Path:
        return self.model_root / "calib" / self.calibration_key

    @property
    def store(self) -> Path:
        return self.store_root / self.cfg.model.name / self.calibration_key

    def compression_tag(self, rate: float | None = None) -> str:
        k = self.cfg.compression
        rate = k.rate if rate is None else rate
        solver = {key: k[key] for key in SOLVER_KEYS}
        return f"{k.method}-{k.allocation}-{_rate_tag(rate)}-{fingerprint(solver)[:8]}"

    def solve(self, rate: float | None = None) -> Path:
        return self.model_root / self.calibration_key / "solve" / self.compression_tag(rate)

    def checkpoint(self, rate: float | None = None) -> Path:
        return self.model_root / self.calibration_key / "compressed" / self.compression_tag(rate)

    def eval_config(self) -> dict[str, Any]:
        """Everything that changes an evaluation's numbers."""
        e = self.cfg.eval
        conf = {k: (list(e[k]) if k == "tasks" else e[k]) for k in EVAL_KEYS}
        return conf | {"seq_len": self.cfg.model.max_seq_len, "dtype": self.cfg.model.dtype}

    @property
    def eval_tag(self) -> str:
        """Evaluations under different eval configs live side by side (eval=default vs eval=full)."""
        return f"eval-{fingerprint(self.eval_config())[:8]}"

    def evaluation(self, rate: float | None = None) -> Path:
        return self.model_root / self.calibration_key / "eval" / self.eval_tag / self.compression_tag(rate)

    @property
    def dense_evaluation(self) -> Path:
        return self.model_root / "eval" / self.eval_tag / "dense"

    def rate_metrics(self, rate: float | None = None) -> Path:
        """The latest metrics of one rate at a path DVC can template (``metrics/r<rate>.json``)."""
        rate = self.cfg.compression.rate if rate is None else rate
        return self.model_root / self.calibration_key / "metrics" / f"r{rate:g}.json"

    @property
    def report(self) -> Path:
        return self.model_root / self.calibration_key / "report"


EVAL_KEYS = (
    "tasks", "limit", "batch_size", "num_fewshot", "offline", "average_metric", "seed", "perplexity", "wikitext_path",
    "perplexity_max_windows", "perplexity_batch_size",
)
# Compression keys that change the solver's output (everything but the rate list used for sweeps).
SOLVER_KEYS = (
    "method", "allocation", "temperature", "max_sparsity", "ridge_lambda", "nystrom_ridge", "eig_floor", "round_to",
)
