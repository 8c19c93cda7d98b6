"""The committed lock agrees with pyproject's ranges; the saved model code names the transformers it was tested with."""

from __future__ import annotations

import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from pipeline.modeling.modeling_modegpt import TESTED_TRANSFORMERS

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest itself depends on tomli there
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]


def _lock() -> dict[str, Version]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", line.strip())
            assert match, f"not an exact pin: {line!r}"
            pins[canonicalize_name(match.group(1))] = Version(match.group(2))
    return pins


def _requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in [*project["dependencies"], *project["optional-dependencies"]["dev"]]]


def test_every_dependency_is_locked_within_its_range() -> None:
    pins = _lock()
    for req in _requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in requirements.lock"
        assert pins[name] in req.specifier, f"{req.name}=={pins[name]} is outside pyproject's {req.specifier}"


def test_saved_model_code_names_the_tested_transformers_range() -> None:
    lower = next(r for r in _requirements() if r.name == "transformers")
    floor = next(s.version for s in lower.specifier if s.operator == ">=")
    assert Version(TESTED_TRANSFORMERS[0]) == Version(floor), "update TESTED_TRANSFORMERS with pyproject's bound"
    assert Version(TESTED_TRANSFORMERS[1]) == _lock()["transformers"], "update TESTED_TRANSFORMERS with the lock"
