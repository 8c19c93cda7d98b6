"""Checks of the model a run names, done before a stage records anything: each failure is one AssetError line.

A stage that recorded a bad source as complete would let the failure surface one stage later, and a corrected
rerun would then trip on that record; so ``prepare`` (and every stage that loads the model) checks here first.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .adapters import family_of, tiny_model_types
from .assets import AssetError, gguf_source, safetensors_header

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
GGUF_MAGIC = b"GGUF"


def looks_local(source: str) -> bool:
    """Whether ``source`` names a path rather than a Hub repo id (``org/name`` or ``name``)."""
    return (Path(source).expanduser().exists() or os.path.isabs(source) or source.startswith((".", "~"))
            or source.count("/") > 1 or "\\" in source)


def check_model_source(cfg: Any, hub: bool = True) -> None:
    """Refuse a model source that later stages cannot load, naming the bad value and what was expected.

    ``hub``: also resolve a Hub id's config.json (one request, or the local cache): ``prepare`` does, so an
    unreachable Hub or a gated repo is reported there rather than recorded.
    """
    m = cfg.model
    gguf = gguf_source(m)
    if gguf is not None:
        check_gguf(gguf)
        return
    source = str(m.source)
    if looks_local(source):
        check_model_folder(Path(source).expanduser(), source, m.family)
    elif hub:
        config = hub_config(source, m.revision)
        check_model_type(_read_config(config, source), source, m.family)


def check_model_folder(folder: Path, source: str, family: str | None = None) -> None:
    if not folder.exists():
        raise AssetError(f"model.source={source} does not exist: expected a local model folder or a Hub repo id")
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise AssetError(f"model.source={source} is not a model folder (no config.json): expected a Hugging Face "
                         "model folder (config.json, tokenizer files, *.safetensors weights)")
    check_model_type(_read_config(folder / "config.json", source), source, family)
    weights = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    if not weights:
        raise AssetError(f"model.source={source} has no weights: expected *.safetensors (or *.bin) files beside "
                         "config.json")
    for path in weights:
        if path.suffix == ".safetensors":
            safetensors_header(path)
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise AssetError(f"model.source={source} has no tokenizer: expected one of {', '.join(TOKENIZER_FILES)}")


def _read_config(path: Path, source: str) -> dict[str, Any]:
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AssetError(f"model.source={source}: {path} is not valid JSON ({e}): the file is corrupted") from None
    if not isinstance(config, dict):
        raise AssetError(f"model.source={source}: {path} is not a model config (expected a JSON object)")
    return config


def check_model_type(config: dict[str, Any], source: str, family: str | None = None) -> None:
    """The model type must be one an adapter claims, and the one of ``model.family`` when that is set."""
    model_type = config.get("model_type")
    found = family_of(model_type)
    if found is None:
        raise AssetError(f"model.source={source} has model_type {model_type!r}, which no adapter supports: "
                         f"supported model types are {', '.join(tiny_model_types())}")
    if family and family != found:
        raise AssetError(f"model.family={family} does not match model.source={source}, whose model_type "
                         f"{model_type!r} belongs to family {found!r}: set model.family={found}")


def check_gguf(path: Path) -> None:
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise AssetError(f"{path} is not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r}): "
                         "check model.gguf_file or reinstall the package")


def hub_config(repo: str, revision: str | None = None) -> Path:
    """config.json of a Hub repo (downloaded, or from the cache), with the Hub's failures as one line each."""
    from huggingface_hub import errors as hub
    from huggingface_hub import hf_hub_download

    login = "log in with `huggingface-cli login` (and accept the model's licence on its Hub page)"
    try:
        return Path(hf_hub_download(repo, "config.json", revision=revision or None))
    except hub.GatedRepoError:
        raise AssetError(f"model.source={repo} is a gated Hub repo this account cannot read: {login}, or pass a "
                         "local folder (model.source=/path/to/model)") from None
    except hub.RepositoryNotFoundError:
        raise AssetError(f"model.source={repo} is absent from the Hugging Face Hub or gated: check the repo id, "
                         f"{login}, or pass a local folder (model.source=/path/to/model)") from None
    except hub.RevisionNotFoundError:
        raise AssetError(f"model.revision={revision} does not exist in Hub repo {repo}: expected a branch, "
                         "tag or commit of it") from None
    except hub.RemoteEntryNotFoundError:
        raise AssetError(f"model.source={repo} is not a model repo (no config.json on the Hub): expected a "
                         "Hugging Face model") from None
    except hub.HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403):
            raise AssetError(f"model.source={repo}: the Hub refused access (HTTP {status}): {login}") from None
        raise AssetError(f"model.source={repo}: the Hugging Face Hub answered HTTP {status}: retry later or pass "
                         "a local folder (model.source=/path/to/model)") from None
    except (hub.LocalEntryNotFoundError, hub.OfflineModeIsEnabled, ConnectionError, TimeoutError, OSError):
        from huggingface_hub import constants

        how = "unset HF_HUB_OFFLINE" if constants.HF_HUB_OFFLINE else "connect"
        raise AssetError(f"could not reach the Hugging Face Hub for model.source={repo}: pass a local folder "
                         f"(model.source=/path/to/model) or {how}") from None
