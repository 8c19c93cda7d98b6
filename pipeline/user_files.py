"""Files and directories the user names (paths.*, calibration.path, eval.wikitext_path...), read and written with
failures that name the value and what was expected, in one line.

An operating-system error or a decode error deep in a stage says what failed (``[Errno 2] ... '/proc/nope'``,
``'utf-8' codec can't decode byte 0xff in position 3``) but not which setting the user must change, and its
traceback buries even that. The checks here run before a stage writes anything, and :func:`path_error` explains
an OSError raised later only when the user's path accounts for it, so that a bug's OSError keeps its traceback.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Directories a run writes under, and files or folders it reads: the settings a path error is blamed on.
OUTPUT_KEYS = ("paths.root", "paths.store_root")
INPUT_KEYS = ("model.source", "calibration.path", "eval.wikitext_path")
# Errors that say the place itself refuses us, not that the code looked for the wrong file.
REFUSED = (errno.EACCES, errno.EPERM, errno.EROFS)


class UserFileError(ValueError):
    """A file or directory the user named cannot be read or written as expected."""


def _select(cfg: Any, key: str) -> str | None:
    from omegaconf import OmegaConf

    value = OmegaConf.select(cfg, key, default=None)
    return None if value is None or value == "" else str(value)


def check_output_dir(key: str, value: str) -> None:
    """Refuse an output directory that cannot be created or written, leaving nothing behind.

    The nearest existing ancestor must be a directory in which a scratch directory can be made (and is removed at
    once): mkdir itself is the only reliable test (``os.access`` says yes for root on /proc, where mkdir fails).
    """
    path = Path(value).expanduser().absolute()
    existing = path
    try:
        while not existing.exists():  # a path through a regular file does not exist: its parent is found
            existing = existing.parent
        if not existing.is_dir():
            raise UserFileError(f"{key}={value} cannot be created: {existing} is a file, not a directory: expected "
                                "a directory path (one that exists or can be created)")
        os.rmdir(tempfile.mkdtemp(prefix=".modegpt-probe-", dir=existing))
    except OSError as e:
        verb = "written" if existing == path else "created"
        raise UserFileError(f"{key}={value} cannot be {verb}: {existing} refuses a new directory ({e.strerror}): "
                            "expected a directory this user can create and write") from None


def check_output_dirs(cfg: Any) -> None:
    """Every output root of ``cfg`` (:data:`OUTPUT_KEYS`), before anything is written under it."""
    for key in OUTPUT_KEYS:
        value = _select(cfg, key)
        if value is not None:
            check_output_dir(key, value)


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def path_error(exc: OSError, cfg: Any) -> str | None:
    """The one-line message for an OSError on a path the user named, or None when the user's paths do not
    explain it (a bug: it keeps its traceback)."""
    if exc.filename is None:
        return None
    target = Path(os.fspath(exc.filename)).expanduser().absolute()
    named = {key: value for key in (*OUTPUT_KEYS, *INPUT_KEYS) if (value := _select(cfg, key)) is not None}
    # the deepest setting that holds the path is the one to blame (paths.store_root lies under paths.root)
    holding = sorted((k for k, v in named.items() if _within(target, Path(v).expanduser().absolute())),
                     key=lambda k: len(Path(named[k]).expanduser().absolute().parts), reverse=True)
    for key in holding:
        value = named[key]
        if key in OUTPUT_KEYS:
            try:  # the root itself gone bad (removed, made read-only, its disk unmounted) explains any error
                check_output_dir(key, value)
            except UserFileError as e:
                return str(e)
        if exc.errno in REFUSED or isinstance(exc, IsADirectoryError | NotADirectoryError):
            action, expected = (("write", "writable throughout") if key in OUTPUT_KEYS else
                                ("read", "readable by this user"))
            return f"cannot {action} {exc.filename} ({exc.strerror}): expected {key}={value} to be {expected}"
    return None


def _not_utf8(key: str, path: str | Path, expected: str) -> UserFileError:
    """Where the first byte that is not UTF-8 lies, found again in bytes once text decoding has failed (the
    decoder's offset is into its read buffer, not the file). A newline byte never occurs inside a UTF-8 sequence,
    so decoding line by line finds the same byte as decoding the whole file."""
    where = ""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                where = f" (byte 0x{raw[e.start]:02x} at line {lineno}, byte {e.start + 1})"
                break
    return UserFileError(f"{key}={str(path)!r} is not UTF-8 text{where}: expected {expected}")


def _unreadable(key: str, path: str | Path, e: OSError, expected: str) -> UserFileError:
    return UserFileError(f"{key}={str(path)!r} cannot be read ({e.strerror}): expected {expected}")


def read_user_text(path: str | Path, key: str, expected: str) -> str:
    """``Path.read_text(encoding="utf-8")`` of a file the user named: a file that is not UTF-8 or cannot be read is
    one line naming ``key`` (text mode as before, so that newlines translate exactly as they did)."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise _not_utf8(key, path, expected) from None
    except OSError as e:
        raise _unreadable(key, path, e, expected) from None


def user_lines(path: str | Path, key: str, expected: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of a UTF-8 file the user named, read as it goes (a JSONL file may be large)."""
    try:
        with open(path, encoding="utf-8") as f:
            yield from enumerate(f, 1)
    except UnicodeDecodeError:
        raise _not_utf8(key, path, expected) from None
    except OSError as e:
        if e.filename is None:  # a read error (EIO...) is the disk's, not the setting's: keep its traceback
            raise
        raise _unreadable(key, path, e, expected) from None
