"""Paths the user names: an unusable output root, an unreadable or non-UTF-8 input, and which OSErrors they explain."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pipeline.user_files import UserFileError, check_output_dir, path_error, read_user_text, user_lines
from stages import cli


def _cfg(root: Path, **extra: str) -> object:
    return OmegaConf.create({"paths": {"root": str(root), "store_root": f"{root}/stores"},
                             "calibration": {"path": extra.get("calibration", None)},
                             "model": {"source": "org/model"}, "eval": {"wikitext_path": None}})


def test_output_dir_checks_leave_nothing_behind(tmp_path: Path) -> None:
    check_output_dir("paths.root", str(tmp_path / "new" / "deeper"))  # creatable: fine, and not created
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserFileError, match=r"paths.root=.*afile/out/more cannot be created: .*afile is a file, not a "
                                            r"directory: expected a directory path"):
        check_output_dir("paths.root", str(tmp_path / "afile" / "out" / "more"))
    with pytest.raises(UserFileError, match=r"^paths.store_root=/proc/nope cannot be created: /proc refuses a new "
                                            r"directory \(No such file or directory\)"):
        check_output_dir("paths.store_root", "/proc/nope")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_an_oserror_is_the_users_only_where_their_path_explains_it(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path / "out", calibration=str(tmp_path / "calib.jsonl"))
    denied = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "out" / "stores" / "x.zarr"))
    assert path_error(denied, cfg) == (f"cannot write {denied.filename} (Permission denied): expected "
                                       f"paths.store_root={tmp_path}/out/stores to be writable throughout")
    unreadable = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "calib.jsonl"))
    assert "expected calibration.path=" in path_error(unreadable, cfg) and "to be readable" in path_error(
        unreadable, cfg)
    # paths.root removed under a run: any error beneath it is explained by the root itself
    gone = _cfg(Path("/proc/nope"))
    missing = FileNotFoundError(errno.ENOENT, "No such file or directory", "/proc/nope/x/manifest.json")
    assert path_error(missing, gone).startswith("paths.root=/proc/nope cannot be created")
    # a file the code itself looked for under a healthy root is a bug: its traceback stays
    assert path_error(FileNotFoundError(errno.ENOENT, "No such file", str(tmp_path / "out" / "plan.json")), cfg) \
        is None
    assert path_error(PermissionError(errno.EACCES, "Permission denied", "/etc/elsewhere"), cfg) is None
    assert path_error(OSError(errno.EACCES, "denied"), cfg) is None  # no path: nothing to blame
    assert cli.user_error(denied, cfg) == path_error(denied, cfg) and cli.user_error(denied) is None


def test_traceback_env_keeps_the_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cli.TRACEBACK_ENV, "1")
    assert cli.user_error(UserFileError("x")) is None
    monkeypatch.setenv(cli.TRACEBACK_ENV, "0")
    assert cli.user_error(UserFileError("x")) == "x"


def test_non_utf8_input_names_the_setting_and_the_byte(tmp_path: Path) -> None:
    path = tmp_path / "calib.jsonl"
    path.write_bytes(b'{"text": "ok"}\n' * 3000 + b'{"text": "caf\xe9"}\n')  # past the reader's first buffer
    with pytest.raises(UserFileError, match=r"calibration.path='.*calib.jsonl' is not UTF-8 text \(byte 0xe9 at "
                                            r"line 3001, byte 14\): expected JSON Lines"):
        list(user_lines(path, "calibration.path", "JSON Lines"))
    with pytest.raises(UserFileError, match=r"is not UTF-8 text \(byte 0xe9 at line 3001, byte 14\)"):
        read_user_text(path, "eval.wikitext_path", "a raw file")
    with pytest.raises(UserFileError, match=r"eval.wikitext_path='.*' cannot be read \(Is a directory\): expected "
                                            r"a raw file"):
        read_user_text(tmp_path, "eval.wikitext_path", "a raw file")
    good = tmp_path / "good.txt"
    good.write_bytes(b"a\r\nb\rc\n")
    assert read_user_text(good, "k", "x") == good.read_text(encoding="utf-8")  # newlines as read_text's
    assert list(user_lines(good, "k", "x")) == list(enumerate(open(good, encoding="utf-8"), 1))
