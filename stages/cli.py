"""The `modegpt` command: `modegpt <stage> [hydra overrides]`, or `modegpt run` for the whole cached chain.

Beside the stages, three commands about what is on disk (no Hydra job, no run directory): `modegpt ls`,
`modegpt gc <key or path>... [--dry-run]` and `modegpt migrate` (pipeline.artifacts.inventory / .legacy).
"""

from __future__ import annotations

import errno
import functools
import importlib
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from pipeline.adapters import UnsupportedModelError
from pipeline.artifacts import ArtifactError
from pipeline.artifacts.aliases import publish
from pipeline.artifacts.expected import ASSEMBLE, EVALUATE, EXPORT, REPORT, STAGES
from pipeline.artifacts.legacy import refuse_old_layout
from pipeline.assets import AssetError
from pipeline.calibration import CalibrationError
from pipeline.config import ConfigError, compose_config, refuse_retired, register_configs, validate
from pipeline.evaluation.tasks import UnknownTaskError
from pipeline.export import export_refusal
from pipeline.export.layout import ExportError
from pipeline.methods.base import UnknownMethodError
from pipeline.user_files import UserFileError, check_output_dirs, path_error

log = logging.getLogger("modegpt")

USER_ERRORS = (ConfigError, ArtifactError, AssetError, CalibrationError, UnsupportedModelError, UnknownMethodError,
               UnknownTaskError, ExportError, UserFileError)
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
# Set (to anything but 0 or empty) to get the traceback behind a one-line error, e.g. to report a misjudged one.
TRACEBACK_ENV = "MODEGPT_TRACEBACK"


def user_error(exc: BaseException, cfg: Any = None) -> str | None:
    """The one-line message for an error the user can fix, or None for a bug (which keeps its traceback).

    ``cfg``: the run's config, so that an OSError on a path the user named (paths.root, calibration.path...) is
    explained by that setting (``pipeline.user_files.path_error``); without it only a full disk is.
    """
    if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
        return None
    if isinstance(exc, USER_ERRORS):
        return str(exc)
    if isinstance(exc, OSError) and exc.errno in DISK_FULL:
        where = f" while writing {exc.filename}" if exc.filename else ""
        return (f"no space left on the device{where}: free space or point paths.root / paths.store_root at a "
                "larger disk, then rerun the same command (finished layers and artifacts are kept)")
    if isinstance(exc, OSError) and cfg is not None:
        return path_error(exc, cfg)
    return None


def _stages() -> dict[str, Callable[[Any], Any]]:
    """stage name -> its ``run``, for every stage in order (``stages.<name>``, imported only when run)."""
    return {name: importlib.import_module(f"stages.{name}").run for name in STAGES}


# Stages that need a compressed checkpoint: a method whose factors do not assemble stops before them.
NEEDS_CHECKPOINT = (ASSEMBLE, EXPORT, EVALUATE, REPORT)


def run_stage(name: str, cfg: Any, stage: Callable[[Any], Any] | None = None) -> None:
    """One stage, then the latest view (`<root>/latest/`, what dvc.yaml tracks) points at what it produced."""
    (stage or _stages()[name])(cfg)
    if int(os.environ.get("RANK", "0")) == 0:  # torchrun: every rank ran the stage, one publishes
        publish(cfg, name)


def run_all(cfg: Any) -> None:
    """Every stage in order; each skips itself when its artifact is complete and current."""
    from pipeline.methods import method_named

    method = method_named(cfg.compression.method)
    for name, stage in _stages().items():
        if name in NEEDS_CHECKPOINT and not method.assemblable:
            log.info("compression.method=%s is a solve-only baseline (benchmarks/quality.py evaluates it): "
                     "stopping after solve", method.name)
            return
        if name == EXPORT and (reason := export_refusal(cfg)) is not None:
            log.info("skipping export: %s", reason)
            continue
        log.info("== stage %s ==", name)
        run_stage(name, cfg, stage)


def stage_names() -> list[str]:
    return [*STAGES, "run"]


def _ls(cfg: Any, names: list[str], flags: set[str]) -> list[str]:
    from pipeline.artifacts.inventory import listing

    return [listing(cfg)]


def _gc(cfg: Any, names: list[str], flags: set[str]) -> list[str]:
    from pipeline.artifacts.inventory import collect_garbage

    return collect_garbage(cfg, names, dry_run="--dry-run" in flags)


def _migrate(cfg: Any, names: list[str], flags: set[str]) -> list[str]:
    from pipeline.artifacts.legacy import migrate

    validate(cfg)
    return migrate(cfg)


# Commands about what is on disk, not stages: they compose the config (for paths.root, paths.store_root, and
# for migrate the keys of one job) and print; they never start a Hydra job. name -> (run, flags, takes names).
COMMANDS: dict[str, tuple[Callable[[Any, list[str], set[str]], list[str]], tuple[str, ...], bool]] = {
    "ls": (_ls, (), False),
    "gc": (_gc, ("--dry-run",), True),
    "migrate": (_migrate, (), False),
}


def run_command(name: str, args: list[str]) -> None:
    """`modegpt ls|gc|migrate [names] [key=value overrides] [flags]`: prints its lines; errors are one line."""
    run, allowed, takes_names = COMMANDS[name]
    flags = {a for a in args if a.startswith("-")}
    overrides = [a for a in args if "=" in a and not a.startswith("-")]
    names = [a for a in args if a not in flags and a not in overrides]
    if flags - set(allowed):
        raise SystemExit(f"modegpt: error: {name} takes no option {sorted(flags - set(allowed))[0]}"
                         + (f": expected {', '.join(allowed)}" if allowed else ""))
    if names and not takes_names:
        raise SystemExit(f"modegpt: error: {name} takes only key=value overrides, got {names[0]!r}")
    register_configs()
    try:
        cfg = compose_config(overrides)  # refuses a retired option in one line too
    except Exception as e:  # Hydra/OmegaConf composition errors
        raise SystemExit(f"modegpt: error: {_one_line(e)}") from None
    try:
        lines = run(cfg, names, flags)
    except Exception as e:
        message = user_error(e, cfg)
        if message is None:
            raise
        raise SystemExit(f"modegpt: error: {message}") from None
    print("\n".join(lines))


def _one_line(exc: BaseException) -> str:
    """Hydra's multi-line composition errors (and their causes), folded into one line."""
    text = str(exc)
    if exc.__cause__ is not None:
        text += "\n" + str(exc.__cause__)
    text = text.split("Config search path")[0]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    noise = ("full_key", "object_type", "reference_type", "Set the environment")
    lines = [ln for ln in lines if not ln.startswith(noise) and ln != "schema"]
    head, *rest = lines or [type(exc).__name__]
    if rest and rest[0].startswith("Available options"):
        return f"{head}: {rest[0].rstrip(':').lower()}: {', '.join(rest[1:])}"
    return "; ".join([head, *rest])


def _check_retired(args: list[str]) -> None:
    """Overrides that name a retired option (``pipeline.config.RETIRED``), refused in one line before Hydra composes
    a stage's job (a key gone from the schema would fail there in several), for single runs and sweeps alike; the
    other commands compose through ``compose_config``, which refuses them itself."""
    try:
        refuse_retired([a for a in args if not a.startswith("-")])
    except ConfigError as e:
        raise SystemExit(f"modegpt: error: {e}") from None


def _precheck(overrides: list[str]) -> None:
    """Compose once up front so a bad override fails with one line before any work (single runs only)."""
    try:
        cfg = compose_config(overrides)
        validate(cfg)
    except ConfigError as e:
        raise SystemExit(f"modegpt: error: {e}") from None
    except Exception as e:  # Hydra/OmegaConf composition errors
        raise SystemExit(f"modegpt: error: {_one_line(e)}") from None
    _check_outputs(cfg)


def _check_outputs(cfg: Any) -> None:
    """The output roots, before Hydra makes its run directory under paths.root: Hydra's own failure there is a
    traceback and a hint about HYDRA_FULL_ERROR, raised before any code of ours could turn it into one line."""
    try:
        check_output_dirs(cfg)
    except UserFileError as e:
        if user_error(e) is None:  # MODEGPT_TRACEBACK
            raise
        raise SystemExit(f"modegpt: error: {e}") from None


def _precheck_sweep(args: list[str]) -> None:
    """A sweep's output roots, from its overrides that sweep nothing (a swept paths.root goes unchecked here);
    the rest of a sweep's checking stays with Hydra and each job."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides([a for a in args if not a.startswith("-")])
        cfg = compose_config([o.input_line for o in parsed if not o.is_sweep_override()])
    except Exception:  # Hydra reports a bad override itself, in its own words
        return
    _check_outputs(cfg)


def main() -> None:
    argv = sys.argv[1:]
    names = stage_names()
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: modegpt {" + ",".join(names) + "} [hydra overrides] [-m for sweeps]")
        print("       modegpt ls | gc <key or path>... [--dry-run] | migrate   [key=value overrides]")
        print("example: modegpt run compression.rate=0.3   |   modegpt run -m compression.rate=0.1,0.2,0.3")
        raise SystemExit(0 if argv else 2)
    stage, rest = argv[0], argv[1:]
    if stage in COMMANDS:
        run_command(stage, rest)
        return
    if stage not in names:
        raise SystemExit(f"modegpt: error: unknown stage {stage!r}: expected one of "
                         f"{', '.join([*names, *COMMANDS])}")
    _check_retired(rest)
    register_configs()
    multirun = any(a in ("-m", "--multirun") for a in rest)
    if not multirun and not any(a.startswith("-") for a in rest):
        _precheck(rest)
    elif multirun:
        _precheck_sweep(rest)
    target = run_all if stage == "run" else functools.partial(run_stage, stage)

    import hydra

    @hydra.main(version_base="1.3", config_path="pkg://conf", config_name="config")
    def _job(cfg: Any) -> None:
        try:
            validate(cfg)
            refuse_old_layout(cfg)  # before anything is recomputed beside the old directories
            target(cfg)
        except Exception as e:
            message = user_error(e, cfg)
            if message is None:
                raise
            log.error("%s", message)
            raise SystemExit(f"modegpt: error: {message}") from None

    sys.argv = [f"modegpt {stage}", *rest]
    _job()


if __name__ == "__main__":
    main()
