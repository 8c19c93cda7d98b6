"""What exists under ``paths.root`` and ``paths.store_root`` (`modegpt ls`), and removing what the user names
(`modegpt gc`).

An artifact is a directory with a manifest (its kind, config and status come from it), a report, the lm-eval
request cache, Hydra's logs, or a temp directory an interrupted write left. gc removes only what each name
matches, refuses a name that matches nothing or more than one artifact (before removing anything), prints every
directory it removes, and drops the latest-view files (:mod:`.aliases`) that named it, so DVC sees them gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from .aliases import views_of
from .layout import LATEST, MANIFEST, REPORT_DIR, ArtifactPaths, in_current_layout
from .manifest import ArtifactError, Manifest, read_manifest

KINDS = {"prepare": "model", "tokenize": "tokens", "capture": "store", "solve": "solve", "assemble": "checkpoint",
         "export": "export", "evaluate": "eval"}
# The config keys `ls` shows per stage (the manifest holds them all).
SHOWN = {"prepare": ("source", "gguf_file"), "tokenize": ("source", "path", "num_samples", "seq_len", "seed"),
         "capture": ("dtype",), "solve": ("method", "allocation", "rate"), "assemble": ("dtype",),
         "export": ("formats", "quantize"), "evaluate": ("tasks", "limit")}
FIXED = {"cache/eval-requests": ("cache", "lm-eval request answers"), "logs": ("logs", "Hydra job logs")}
TEMP = re.compile(r"\..+\.(tmp|old-\d+)")  # atomic_dir's and atomic_path's temp names
VALUE_WIDTH = 40
# ArtifactPaths.module_curves, .output_sensitivity and .heldout_tokens: files beside the solves, shared by every rate
SOLVE_FILES = re.compile(r"(curves|sensitivity|heldout)-[0-9a-f]+\.safetensors")


@dataclass
class Entry:
    path: Path
    key: str  # what `ls` prints and gc takes: the path under paths.root (a separate store root: its path + it)
    kind: str
    status: str
    size: int
    produced_by: str
    old_layout: bool = False


def _within(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def _abs(path: Path) -> Path:
    return Path(os.path.abspath(path))


def _size(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _value(v: Any) -> str:
    text = ",".join(map(str, v)) if isinstance(v, list) else str(v)
    return text if len(text) <= VALUE_WIDTH else "…" + text[-(VALUE_WIDTH - 1):]  # a path's tail tells it apart


def _short(manifest: Manifest) -> str:
    keys = SHOWN.get(manifest.stage, tuple(manifest.config))
    return " ".join(f"{k}={_value(v)}" for k in keys if (v := manifest.config.get(k)) is not None)


def _entry(d: Path, rel: str, key: str, files: list[str], is_store: bool) -> Entry | None:
    """The artifact at ``d`` (``rel``: its path under its root), or None when ``d`` only holds artifacts."""
    if TEMP.fullmatch(d.name):
        return Entry(d, key, "temp", "partial", _size(d), "left by an interrupted write")
    if not is_store and rel in FIXED:
        kind, what = FIXED[rel]
        return Entry(d, key, kind, "complete", _size(d), what)
    if MANIFEST in files:
        try:
            manifest = read_manifest(d)
        except ArtifactError:
            return Entry(d, key, "unknown", "corrupt manifest", _size(d), "", old_layout=True)
        assert manifest is not None
        kind = KINDS.get(manifest.stage, manifest.stage)
        current = in_current_layout("store" if is_store and kind == "store" else kind, rel)
        return Entry(d, key, kind, manifest.status, _size(d), _short(manifest), old_layout=not current)
    if d.name == REPORT_DIR and "report.md" in files:
        return Entry(d, key, "report", "complete", _size(d), "", old_layout=not in_current_layout("report", rel))
    return None


def _solve_file_entry(f: Path, key: str) -> Entry:
    """A module-error-curves, KL-probe or held-out-tokens file beside the solves, labelled with the store and setting
    it was made for."""
    from safetensors import safe_open

    produced = ""
    with contextlib.suppress(Exception):
        with safe_open(str(f), "pt") as handle:
            made_for = json.loads((handle.metadata() or {}).get("key", "{}"))
        # the curves' key nests the compression fields; the probe's holds curve_scale at the top
        fields = made_for | made_for.get("compression", {})
        produced = " ".join(f"{k}={_value(fields[k])}" for k in ("store", "method", "curve_scale", "count")
                            if k in fields)
    kind = f.name.split("-", 1)[0]
    return Entry(f, key, kind, "complete", f.stat().st_size, produced)


def scan(cfg: Any) -> list[Entry]:
    """Every artifact under paths.root and paths.store_root, in path order."""
    paths = ArtifactPaths(cfg)
    root, store_root = _abs(paths.root), _abs(paths.store_root)
    bases = [(root, False, paths.root)]
    if store_root != root:
        bases.append((store_root, True, paths.store_root))
    entries = []
    for base, is_store, given in bases:
        if not base.is_dir():
            continue
        for dirpath, dirnames, files in os.walk(base):
            d = Path(dirpath)
            rel = d.relative_to(base).as_posix()
            dirnames.sort()
            if d == base:
                continue
            if (not is_store and d == store_root) or (not is_store and rel == LATEST):
                dirnames.clear()  # the store root is walked on its own; the latest view holds no artifact
                continue
            if is_store and _within(store_root, root):
                key = d.relative_to(root).as_posix()
            else:
                key = rel if not is_store else f"{given}/{rel}"
            entry = _entry(d, rel, key, files, is_store)
            if entry is not None:
                entries.append(entry)
                dirnames.clear()
            elif not is_store:
                entries += [_solve_file_entry(d / f, f"{key}/{f}") for f in sorted(files) if SOLVE_FILES.fullmatch(f)]
    return sorted(entries, key=lambda e: e.key)


def listing(cfg: Any) -> str:
    """`modegpt ls`: one line per artifact (kind, status, size, key, the config that produced it)."""
    paths = ArtifactPaths(cfg)
    entries = scan(cfg)
    where = f"{paths.root}" + ("" if _within(_abs(paths.store_root), _abs(paths.root)) else f" and {paths.store_root}")
    if not entries:
        return f"no artifacts under {where}"
    rows = [("KIND", "STATUS", "SIZE", "KEY", "PRODUCED BY")]
    for e in entries:
        status = e.status + (" (old layout)" if e.old_layout else "")
        rows.append((e.kind, status, human_size(e.size), e.key, e.produced_by))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4] for r in rows]
    lines.append(f"{len(entries)} artifacts, {human_size(sum(e.size for e in entries))} under {where}")
    if any(e.old_layout for e in entries):
        lines.append("old layout: `modegpt migrate <the overrides that produced it>` moves it to its new name, "
                     "`modegpt gc <key>` removes it")
    return "\n".join(line.rstrip() for line in lines)


def _resolve(name: str, entries: list[Entry], paths: ArtifactPaths) -> tuple[Path, list[Entry]]:
    """What ``name`` names: an artifact, or a directory of artifacts (a path), exactly one or an error."""
    roots = [_abs(paths.root), _abs(paths.store_root)]
    found: dict[Path, list[Entry]] = {}
    for candidate in (Path(name), paths.root / name, paths.store_root / name):
        if not candidate.exists():
            continue
        p = _abs(candidate)
        if p in roots:
            raise ArtifactError(f"gc: {name} is a whole artifact root: name what to remove inside it "
                                "(`modegpt ls` lists it)")
        if not any(_within(p, r) for r in roots):
            raise ArtifactError(f"gc: {name} is outside {paths.root} and {paths.store_root}: gc removes artifacts only")
        inside = [e for e in entries if _within(_abs(e.path), p)]
        holder = next((e for e in entries if _within(p, _abs(e.path))), None)
        if inside:
            found[p] = inside
        elif holder is not None:
            raise ArtifactError(f"gc: {name} is inside the artifact {holder.key}: name the whole artifact")
    if len(found) > 1:  # e.g. a model key names both its run directories and its stores
        raise ArtifactError(f"gc: {name} is ambiguous: it names {', '.join(map(str, sorted(found)))}: name one by "
                            "its whole path")
    if found:
        return next(iter(found.items()))
    # By key, or by its last components: an artifact's, or a directory's that holds artifacts (a whole run).
    wanted = name.strip("/")
    keyed = {_abs(e.path): e.key for e in entries} | _holders(entries, paths)
    matches = [p for p, key in keyed.items() if key == wanted or key.endswith("/" + wanted)]
    if not matches:
        raise ArtifactError(f"gc: {name} matches nothing under {paths.root} or {paths.store_root}: "
                            "`modegpt ls` lists what exists")
    if len(matches) > 1:
        shown = ", ".join(sorted(keyed[p] for p in matches)[:3]) + (", …" if len(matches) > 3 else "")
        raise ArtifactError(f"gc: {name} is ambiguous: it matches {len(matches)} directories ({shown}): name one by "
                            "its whole key")
    return matches[0], [e for e in entries if _within(_abs(e.path), matches[0])]


def _holders(entries: list[Entry], paths: ArtifactPaths) -> dict[Path, str]:
    """Directories above artifacts (below the roots), with their keys."""
    roots = [_abs(paths.root), _abs(paths.store_root)]
    found = {}
    for e in entries:
        path, key = _abs(e.path).parent, e.key.rsplit("/", 1)[0] if "/" in e.key else ""
        while key and path not in roots:
            found[path] = key
            path, key = path.parent, key.rsplit("/", 1)[0] if "/" in key else ""
    return found


def _store_lock(store: Path) -> Path:
    return Path(f"{store}.lock")  # beside the store, as capture takes it


def _refuse_locked(entries: list[Entry]) -> None:
    for e in entries:
        lock = _store_lock(e.path)
        if e.kind == "store" and lock.exists():
            held = FileLock(str(lock))
            try:
                held.acquire(timeout=0)
            except Timeout:
                raise ArtifactError(f"gc: {e.key} is being written by a capture (lock {lock} is held)") from None
            held.release()


def _prune_empty(start: Path, roots: list[Path]) -> None:
    d = start
    while d not in roots and any(_within(d, r) for r in roots):
        try:
            d.rmdir()
        except OSError:
            return
        d = d.parent


def collect_garbage(cfg: Any, names: list[str], dry_run: bool = False) -> list[str]:
    """`modegpt gc`: remove what ``names`` name (all resolved before anything goes); one line per removal."""
    if not names:
        raise ArtifactError("gc: name what to remove, by the key or path `modegpt ls` prints (nothing else goes)")
    paths = ArtifactPaths(cfg)
    entries = scan(cfg)
    targets: dict[Path, list[Entry]] = {}
    for name in names:
        path, inside = _resolve(name, entries, paths)
        targets[path] = inside
    # A directory named inside another named one goes with it.
    chosen = {p: v for p, v in targets.items() if not any(q != p and _within(p, q) for q in targets)}
    removed = [e for v in chosen.values() for e in v]
    _refuse_locked(removed)
    verb = "would remove" if dry_run else "removed"
    lines = []
    roots = [_abs(paths.root), _abs(paths.store_root)]
    for path, inside in sorted(chosen.items()):
        for e in inside:
            lines.append(f"{verb} {e.kind} {e.key} ({human_size(e.size)})")
        if all(_abs(e.path) != path for e in inside):
            lines.append(f"{verb} the directory {path} that holds them")
        if not dry_run:
            if path.is_file():  # a curves, sensitivity or held-out tokens file
                path.unlink()
            else:
                shutil.rmtree(path)
            for e in inside:
                if e.kind == "store":
                    _store_lock(_abs(e.path)).unlink(missing_ok=True)
            _prune_empty(path.parent, roots)
    for view in views_of(paths.root, chosen):
        lines.append(f"{verb} {view} (it named a removed artifact)")
        if not dry_run:
            view.unlink()
    total = human_size(sum(e.size for e in removed))
    lines.append(f"{verb} {len(removed)} artifact(s), {total}" + (": run again without --dry-run to remove them"
                                                                     if dry_run else ""))
    return lines
