"""Every bad input is one line through the real CLI, and no failed run leaves an artifact marked complete.

Each case runs ``modegpt <stage> ...`` (``stages.cli.main``, in process) on a tiny model, expects one
``modegpt: error:`` line naming the bad value, checks that the failing stage recorded nothing as complete, then
reruns the stage with the input corrected and expects it to finish (nothing the failed run left trips it).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, compose_config, tiny_overrides

from pipeline.artifacts import COMPLETE, ArtifactPaths, read_manifest
from stages import capture, cli, evaluate, prepare, tokenize

STAGES = {"prepare": prepare, "tokenize": tokenize, "capture": capture, "evaluate": evaluate}


def _http_error(cls_name: str, status: int) -> Exception:
    import httpx2
    from huggingface_hub import errors

    response = httpx2.Response(status, request=httpx2.Request("GET", "https://huggingface.co/org/model"))
    return getattr(errors, cls_name)(f"{cls_name} for org/model", response=response)


def _hub_raises(exc: Exception) -> Callable[[pytest.MonkeyPatch], None]:
    def patch(monkeypatch: pytest.MonkeyPatch) -> None:
        import huggingface_hub

        def download(*args: Any, **kwargs: Any) -> str:
            raise exc

        monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)

    return patch


def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def _disk_full_on_second_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.capture import CorrelationStore

    real = CorrelationStore.write_layer

    def write_layer(self: Any, layer: int, *args: Any, **kwargs: Any) -> None:
        if layer == 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.zarr_path))
        real(self, layer, *args, **kwargs)

    monkeypatch.setattr(CorrelationStore, "write_layer", write_layer)


@dataclass
class Case:
    stage: str
    bad: dict[str, Any]  # overrides (``{x}`` in a value: the case's fixture path x)
    message: str  # the error line contains it
    patch: Callable[[pytest.MonkeyPatch], None] | None = None
    before: tuple[str, ...] = ()  # stages run first with the corrected config
    fixed: dict[str, Any] = field(default_factory=dict)  # overrides of the corrected rerun


HUB = "meta-llama/Llama-2-7b-hf"
CASES = {
    "missing-model-path": Case("prepare", {"model.source": "/nonexistent/model"},
                               "model.source=/nonexistent/model does not exist"),
    "folder-not-a-model": Case("prepare", {"model.source": "{notmodel}"}, "is not a model folder (no config.json)"),
    "empty-folder": Case("prepare", {"model.source": "{empty}"}, "is not a model folder (no config.json)"),
    "no-weights": Case("prepare", {"model.source": "{noweights}"}, "has no weights"),
    "no-tokenizer": Case("prepare", {"model.source": "{notokenizer}"}, "has no tokenizer"),
    "unsupported-architecture": Case("prepare", {"model.source": "{gpt2}"}, "model_type 'gpt2', which no adapter"),
    "wrong-family": Case("prepare", {"model.family": "opt"}, "does not match model.source="),
    "truncated-safetensors": Case("prepare", {"model.source": "{truncated}"}, "model.safetensors is truncated"),
    "corrupt-safetensors-header": Case("prepare", {"model.source": "{badheader}"},
                                       "model.safetensors is not a valid safetensors file"),
    "hub-offline": Case("prepare", {"model.source": HUB}, f"could not reach the Hugging Face Hub for "
                        f"model.source={HUB}: pass a local folder (model.source=/path/to/model) or unset "
                        "HF_HUB_OFFLINE",
                        patch=_offline),
    "hub-unreachable": Case("prepare", {"model.source": HUB}, "could not reach the Hugging Face Hub for",
                            patch=_hub_raises(ConnectionError("Name or service not known"))),
    "hub-gated": Case("prepare", {"model.source": HUB}, f"model.source={HUB} is a gated Hub repo",
                      patch=_hub_raises(_http_error("GatedRepoError", 403))),
    "hub-absent": Case("prepare", {"model.source": HUB}, f"model.source={HUB} is absent from the Hugging Face Hub",
                       patch=_hub_raises(_http_error("RepositoryNotFoundError", 404))),
    "hub-forbidden": Case("prepare", {"model.source": HUB}, "the Hub refused access (HTTP 401)",
                          patch=_hub_raises(_http_error("HfHubHTTPError", 401))),
    "hub-not-a-model-repo": Case("prepare", {"model.source": HUB}, "is not a model repo (no config.json",
                                 patch=_hub_raises(_http_error("RemoteEntryNotFoundError", 404))),
    "gguf-package-missing": Case("prepare", {"model.source_kind": "gguf_package", "model.source": "no_such_gguf_pkg",
                                             "model.gguf_file": "m.gguf"}, "'no_such_gguf_pkg' is not installed"),
    "gguf-not-gguf": Case("prepare", {"model.source_kind": "gguf_package", "model.source": "fake_gguf_pkg",
                                      "model.gguf_file": "m.gguf"}, "m.gguf is not a GGUF file"),
    "calibration-missing-file": Case("tokenize", {"calibration.source": "jsonl",
                                                  "calibration.path": "/nonexistent.jsonl"},
                                     "calibration.path='/nonexistent.jsonl' does not exist", before=("tokenize",)),
    "calibration-no-text-field": Case("tokenize", {"calibration.source": "jsonl", "calibration.path": "{notext}"},
                                      "notext.jsonl' line 1: expected a 'text' field"),
    "calibration-row-not-an-object": Case("tokenize", {"calibration.source": "jsonl", "calibration.path": "{listrow}"},
                                          "line 1: expected a JSON object with a 'text' field, got list"),
    "calibration-not-utf8": Case("tokenize", {"calibration.source": "jsonl", "calibration.path": "{latin1}"},
                                 "latin1.jsonl' is not UTF-8 text (byte 0xff at line 2, byte 11): expected a UTF-8 "
                                 "JSON Lines file"),
    "output-root-under-a-file": Case("tokenize", {"paths.root": "{afile}/outputs"},
                                     "afile/outputs cannot be created: ", before=("tokenize",)),
    "calibration-empty-texts": Case("tokenize", {"calibration.source": "jsonl", "calibration.path": "{emptytext}"},
                                    "holds no text"),
    "tokenize-folder-not-a-model": Case("tokenize", {"model.source": "{notmodel}"}, "is not a model folder"),
    "capture-disk-full": Case("capture", {}, "no space left on the device", patch=_disk_full_on_second_layer,
                              before=("tokenize",)),
    "eval-unknown-task": Case("evaluate", {"eval.offline": "false", "eval.tasks": "[piqa,hellaswg]"},
                              "eval.tasks=['piqa', 'hellaswg']: lm-eval does not know hellaswg "
                              "(did you mean hellaswag?)",
                              fixed={"eval.tasks": "[]", "eval.perplexity_max_windows": 2}),
}


def _bad_inputs(root: Path, model_dir: Path) -> dict[str, Path]:
    """The broken things a user points a run at, each built beside a good tiny model."""
    out = {"notmodel": root / "notmodel", "empty": root / "empty"}
    root.mkdir(parents=True)
    out["notmodel"].mkdir()
    (out["notmodel"] / "README.md").write_text("not a model\n")
    out["empty"].mkdir()

    def copy(name: str, edit: Callable[[Path], None]) -> None:
        target = root / name
        shutil.copytree(model_dir, target)
        edit(target)
        out[name] = target

    def gpt2(d: Path) -> None:
        config = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps(config | {"model_type": "gpt2"}))

    def truncate(d: Path) -> None:
        weights = d / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])

    def bad_header(d: Path) -> None:
        weights = d / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[8:16] = b"garbage!"
        weights.write_bytes(bytes(data))

    copy("gpt2", gpt2)
    copy("truncated", truncate)
    copy("badheader", bad_header)
    copy("noweights", lambda d: (d / "model.safetensors").unlink())
    copy("notokenizer", lambda d: [(d / n).unlink() for n in ("tokenizer.json", "tokenizer_config.json")])
    package = root / "pkgs" / "fake_gguf_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "m.gguf").write_bytes(b"PK\x03\x04 this is a zip, not a GGUF file")
    out["notext"] = root / "notext.jsonl"
    out["notext"].write_text('{"content": "some text"}\n')
    out["listrow"] = root / "listrow.jsonl"
    out["listrow"].write_text('["text"]\n')
    out["latin1"] = root / "latin1.jsonl"  # a file saved as Latin-1: "ÿ" is the byte 0xff
    out["latin1"].write_bytes('{"text": "fine"}\n{"text": "\xff"}\n'.encode("latin-1"))
    out["afile"] = root / "afile"  # a regular file where the output root's parent should be a directory
    out["afile"].write_text("not a directory\n")
    out["emptytext"] = root / "emptytext.jsonl"
    out["emptytext"].write_text('{"text": ""}\n{"text": "   "}\n')
    return out


def _overrides(root: Path, model_dir: Path, values: dict[str, Any], inputs: dict[str, Path]) -> list[str]:
    extra = {k: str(v).format(**inputs) for k, v in values.items()}
    return tiny_overrides(root, model_dir, "llama", **extra)


def _complete_manifests(root: Path) -> dict[Path, float]:
    found = {}
    for path in root.rglob("manifest.json"):
        manifest = read_manifest(path.parent)
        if manifest is not None and manifest.status == COMPLETE:
            found[path] = manifest.created
    return found


def run_cli(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> str:
    """``modegpt <argv>`` in process; returns what it exits with (the line the interpreter prints to stderr)."""
    monkeypatch.setattr(sys, "argv", ["modegpt", *argv])
    with pytest.raises(SystemExit) as info:
        cli.main()
    return str(info.value.code)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_and_records_nothing(name: str, tmp_path: Path, tiny_model_dirs, monkeypatch) -> None:
    case = CASES[name]
    model_dir = tiny_model_dirs["llama"]
    inputs = _bad_inputs(tmp_path / "inputs", model_dir)
    monkeypatch.syspath_prepend(str(tmp_path / "inputs" / "pkgs"))
    root = tmp_path / "outputs"
    good = _overrides(root, model_dir, case.fixed, inputs)
    for stage in case.before:
        STAGES[stage].run(compose_config(good))
    before = _complete_manifests(root)
    if case.patch is not None:
        case.patch(monkeypatch)

    line = run_cli([case.stage, *_overrides(root, model_dir, case.bad, inputs)], monkeypatch)

    assert line.startswith("modegpt: error: ") and "\n" not in line, line
    assert case.message in line, line
    assert "HYDRA_FULL_ERROR" not in line and "Traceback" not in line
    assert _complete_manifests(root) == before, "a failed run recorded an artifact as complete"
    monkeypatch.undo()  # the corrected rerun meets the real Hub functions, store and disk
    cfg = compose_config(good)
    target = evaluate.evaluate_dense(cfg) if case.stage == "evaluate" else STAGES[case.stage].run(cfg)
    done = ArtifactPaths(cfg).dense_evaluation if case.stage == "evaluate" else target
    assert read_manifest(done).status == COMPLETE


def test_disk_full_during_capture_leaves_a_resumable_partial_store(tmp_path: Path, tiny_model_dirs, monkeypatch):
    cfg = compose_config(tiny_overrides(tmp_path, tiny_model_dirs["llama"], "llama"))
    tokenize.run(cfg)
    _disk_full_on_second_layer(monkeypatch)
    with pytest.raises(OSError) as info:
        capture.run(cfg)
    message = cli.user_error(info.value)
    assert message is not None and message.startswith("no space left on the device") and "\n" not in message
    store = ArtifactPaths(cfg).store
    assert read_manifest(store).status == "partial"
    monkeypatch.undo()
    capture.run(cfg)  # resumes at layer 1
    assert read_manifest(store).status == COMPLETE


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("stage, overrides, env, message", [
    ("tokenize", ["calibration.source=jsonl", "calibration.path=/nonexistent.jsonl"], {},
     "calibration.path='/nonexistent.jsonl' does not exist"),
    ("prepare", [f"model.source={HUB}"], {"HF_HUB_OFFLINE": "1"}, "could not reach the Hugging Face Hub"),
    # Hydra makes its run directory under paths.root before the job starts: refused before Hydra runs
    ("run", ["paths.root=/proc/nope"], {}, "modegpt: error: paths.root=/proc/nope cannot be created: /proc refuses "
     "a new directory (No such file or directory): expected a directory this user can create and write"),
    ("run", ["-m", "paths.root={tmp}/afile/out", "compression.rate=0.1,0.2"], {},
     "paths.root={tmp}/afile/out cannot be created: {tmp}/afile is a file, not a directory"),
    ("tokenize", ["calibration.source=jsonl", "calibration.path={tmp}/latin1.jsonl"], {},
     "modegpt: error: calibration.path='{tmp}/latin1.jsonl' is not UTF-8 text (byte 0xff at line 1, byte 11): "
     "expected a UTF-8 JSON Lines file"),
])
def test_the_command_prints_exactly_one_line(tmp_path: Path, tiny_model_dirs, stage, overrides, env,
                                             message) -> None:
    (tmp_path / "afile").write_text("not a directory\n")
    (tmp_path / "latin1.jsonl").write_bytes(b'{"text": "\xff"}\n')
    before = _tree(tmp_path)
    good = tiny_overrides(tmp_path / "outputs", tiny_model_dirs["llama"], "llama")
    argv = [stage, *good, *(o.format(tmp=tmp_path) for o in overrides)]
    result = subprocess.run([sys.executable, "-m", "stages.cli", *argv], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO), **env}, timeout=300)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [result.stderr.strip()] and result.stderr.startswith("modegpt: error:")
    assert message.format(tmp=tmp_path) in result.stderr
    assert "HYDRA_FULL_ERROR" not in result.stderr and "Traceback" not in result.stderr
    assert not _complete_manifests(tmp_path)
    if stage == "run":  # refused before anything is made: not even Hydra's log directory
        assert _tree(tmp_path) == before and not Path("/proc/nope").exists()
    else:  # Hydra's log of the failed run, and no artifact directory
        assert {p.split("/")[0] for p in _tree(tmp_path) - before} <= {"outputs"}
        assert {p.split("/")[1] for p in _tree(tmp_path) - before if p.count("/")} <= {"logs"}


@pytest.mark.parametrize("argv, message", [
    (["run", "compression.mlp_selection=greedy"], "compression.mlp_selection=greedy was retired (it lost to "
     "leverage: docs/results.md): remove it"),
    (["run", "-m", "compression.rate=0.1,0.2", "compression.mlp_selection=greedy,leverage"],
     "compression.mlp_selection=greedy was retired"),
    (["solve", "+compression.mlp_selection=leverage"], "compression.mlp_selection was retired (greedy and energy "
     "lost to leverage"),
    (["ls", "compression.mlp_selection=energy"], "compression.mlp_selection=energy was retired"),
    (["capture", "calibration.fisher=true"], "calibration.fisher was retired"),
    (["solve", "compression.sequential=true", "compression.sequential_target=dense"],
     "compression.sequential_target=dense was retired"),
    (["run", "compression.curve_scale=kl-error"], "compression.curve_scale=kl-error was retired (it never beat kl "
     "by more than 2% among the options kept: docs/results.md): use compression.curve_scale=kl"),
    (["solve", "compression.allocation=validated", "compression.candidates=[kl,kl-error]"],
     "compression.candidates=['kl', 'kl-error'] names a retired curve scale: compression.curve_scale=kl-error"),
])
def test_a_retired_option_is_one_line_before_hydra_starts(tmp_path: Path, tiny_model_dirs, monkeypatch, argv,
                                                           message) -> None:
    """A key gone from the schema fails inside Hydra in several lines: the CLI refuses it (and a retired value) from
    the overrides first, single runs, sweeps and the commands about disk alike, and makes nothing."""
    good = tiny_overrides(tmp_path / "outputs", tiny_model_dirs["llama"], "llama")
    line = run_cli([argv[0], *good, *argv[1:]], monkeypatch)
    assert line.startswith("modegpt: error: ") and "\n" not in line and message in line, line
    assert not (tmp_path / "outputs").exists()


def test_traceback_on_request(tmp_path: Path, tiny_model_dirs) -> None:
    """MODEGPT_TRACEBACK=1 shows what is behind the one line (a user error judged wrongly can be reported)."""
    argv = ["run", *tiny_overrides(tmp_path, tiny_model_dirs["llama"], "llama"), "paths.root=/proc/nope"]
    result = subprocess.run([sys.executable, "-m", "stages.cli", *argv], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO), "MODEGPT_TRACEBACK": "1"}, timeout=300)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "UserFileError: paths.root=/proc/nope cannot be created" in result.stderr
