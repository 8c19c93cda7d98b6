"""Artifacts in the layout before content-addressed names (directories named from config keys only).

A run refuses to start while its config's old-layout directories exist (it would otherwise recompute them beside
the old ones, silently); ``modegpt migrate <overrides>`` moves each one whose manifest matches that config to its
new name, and leaves, with the reason, anything produced by another config or code version.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from .expected import expected_prepare, expected_store, expected_tokens, model_fingerprint
from .layout import ArtifactPaths
from .manifest import ArtifactError, Manifest, describe_mismatch, read_manifest


def old_layout_dirs(cfg: Any) -> list[Path]:
    """This config's directories in the old layout that still exist."""
    return [p for p in ArtifactPaths(cfg).old_layout().values() if p.is_dir()]


def refuse_old_layout(cfg: Any) -> None:
    """One line naming what to do when this config's artifacts are still in the old layout."""
    found = old_layout_dirs(cfg)
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise ArtifactError(
            f"{found[0]}{more} uses the layout before content-addressed artifacts: run `modegpt migrate` with the "
            f"same overrides to move what matches this config, or remove it with `modegpt gc {found[0]}`"
        )


def _mismatch(src: Path, expected: Manifest) -> str | None:
    """Why ``src`` is not ``expected``'s artifact, or None when it is (a partial one resumes where it stopped)."""
    found = read_manifest(src)
    if found is None:
        return "it has no manifest"
    if found.fingerprint != expected.fingerprint:
        return describe_mismatch(src, expected)
    return None


class _Migration:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def left(self, src: Path, why: str) -> None:
        self.lines.append(f"left {src}: {why}; migrate it with the overrides that produced it, or remove it with "
                          f"`modegpt gc {src}`")

    def move(self, src: Path, dst: Path) -> None:
        if dst.exists():
            self.left(src, f"{dst} exists already")
            return
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)  # one rename: both lie under the same root
        self.lines.append(f"moved {src} -> {dst}")

    def check_and_move(self, src: Path, dst: Path, expected: Manifest) -> None:
        if src.is_dir():
            why = _mismatch(src, expected)
            if why is None:
                self.move(src, dst)
            else:
                self.left(src, f"it does not match this config ({why})")


def migrate(cfg: Any) -> list[str]:
    """Move this config's old-layout artifacts to their content-addressed names; one line per directory."""
    paths = ArtifactPaths(cfg)
    old = paths.old_layout()
    m = _Migration()
    m.check_and_move(old["model"], paths.dense_model, expected_prepare(cfg))
    tokens = expected_tokens(cfg)
    m.check_and_move(old["tokens"], paths.tokens, tokens)
    store = expected_store(cfg, tokens.fingerprint)
    lock = Path(f"{old['store']}.lock")
    m.check_and_move(old["store"], paths.store, store)
    if not old["store"].exists():
        lock.unlink(missing_ok=True)
    run = old["run"]
    if run.is_dir():
        # Checkpoints and evaluations chain from the solves, which each name the store they were solved from.
        foreign = [d.name for d in sorted((run / "solve").glob("*")) if d.is_dir()
                   and (found := read_manifest(d)) is not None and found.inputs.get("store") != store.fingerprint]
        if foreign:
            m.left(run, f"its solves {', '.join(foreign)} were solved from another store")
        else:
            m.move(run, paths.run_root)
    evaluations = old["dense evaluations"]
    if evaluations.is_dir():
        model = model_fingerprint(cfg)
        for tag in sorted(p for p in evaluations.iterdir() if p.is_dir()):
            found = read_manifest(tag / "dense")
            if found is not None and found.inputs.get("model") == model:
                m.move(tag, paths.model_root / "eval" / tag.name)
            else:
                m.left(tag, "its dense evaluation is of other weights")
    for parent in (old["tokens"].parent, evaluations, old["run"].parent, old["store"].parent):
        with contextlib.suppress(OSError):  # only empty ones go
            parent.rmdir()
    if not m.lines:
        return [f"nothing of this config is in the old layout under {paths.root} or {paths.store_root}"]
    return m.lines
