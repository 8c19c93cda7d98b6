"""The manifest each artifact must carry for a config: stage, code version, config subset and input fingerprints.

A stage compares the manifest on disk with the one built here to reuse, resume or refuse an artifact, and a
reader compares them to refuse an input made for another config. The code versions are part of every
artifact's fingerprint: bumping one makes every artifact of that stage stale. Directory names (:mod:`.layout`)
leave code versions out, so a stale artifact is refused in place and recomputed with ``overwrite=[<stage>]``
rather than piling up beside its replacement.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.assets import gguf_source
from pipeline.solve_identity import solve_key

from .atomic import fingerprint
from .identity import gguf_identity, text_identity, weights_identity
from .layout import TOKENIZE_KEYS, ArtifactPaths, export_settings, resolve_rate
from .manifest import COMPLETE, Manifest

# Stage names (a manifest's ``stage``) and code versions.
PREPARE, CONVERT_VERSION = "prepare", "convert-1"
TOKENIZE, TOKENIZE_VERSION = "tokenize", "tokenize-1"
CAPTURE, CAPTURE_VERSION = "capture", "capture-1"
SOLVE, SOLVE_VERSION = "solve", "solve-3"  # 3: the key holds every compression field and the curves' and probe's
ASSEMBLE, ASSEMBLE_VERSION = "assemble", "assemble-2"  # 2: the attention finds the KV cache by type (transformers 5.24)
EXPORT, EXPORT_VERSION = "export", "export-1"
EVALUATE, EVALUATE_VERSION = "evaluate", "evaluate-1"
REPORT = "report"
# The pipeline's stages in order: the CLI runs `stages.<name>` for each, `overwrite=[...]` takes these names.
STAGES = (PREPARE, TOKENIZE, CAPTURE, SOLVE, ASSEMBLE, EXPORT, EVALUATE, REPORT)


def conversion_manifest(model_cfg: Any) -> Manifest:
    """The manifest of a dense model de-quantised from a GGUF file shipped in a pip package."""
    return Manifest(
        stage=PREPARE,
        code_version=CONVERT_VERSION,
        config={"source": model_cfg.source, "gguf_file": model_cfg.gguf_file},
        inputs={"gguf": gguf_identity(model_cfg)},
        status=COMPLETE,
    )


def source_reference_manifest(cfg: Any, dense_dir: Path | None = None) -> Manifest:
    """The manifest of a model loaded as it is (nothing to convert): which weights later stages derive from."""
    return Manifest(stage=PREPARE, code_version=CONVERT_VERSION, config={"source": cfg.model.source},
                    inputs={"model": model_fingerprint(cfg)}, status=COMPLETE)


def expected_prepare(cfg: Any) -> Manifest:
    """The manifest of the dense model's artifact: a conversion (GGUF sources) or a reference to the weights."""
    if gguf_source(cfg.model) is not None:
        return conversion_manifest(cfg.model)
    return source_reference_manifest(cfg)


def model_fingerprint(cfg: Any, dense_dir: Path | None = None) -> str:
    """Identity of the dense weights, cheap to compute even for 70B (see ``identity.weights_identity``; the
    converted folder ``dense_dir`` does not change it)."""
    if gguf_source(cfg.model) is not None:
        return conversion_manifest(cfg.model).fingerprint
    return fingerprint(weights_identity(cfg.model))


def text_fingerprint(cal: Any) -> str:
    """Identity of the calibration text."""
    return fingerprint(text_identity(cal))


def expected_tokens(cfg: Any) -> Manifest:
    c = cfg.calibration
    return Manifest(
        stage=TOKENIZE,
        code_version=TOKENIZE_VERSION,
        config={key: c[key] for key in TOKENIZE_KEYS},
        inputs={"model": model_fingerprint(cfg), "text": text_fingerprint(c)},
    )


def _products(cfg: Any) -> dict[str, str]:
    """The precision of the store's products, recorded when not FP64 (FP64 stores keep their fingerprints)."""
    precision = cfg.calibration.product_precision
    return {} if precision == "fp64" else {"product_precision": precision}


def expected_store(cfg: Any, tokens_fingerprint: str) -> Manifest:
    return Manifest(
        stage=CAPTURE,
        code_version=CAPTURE_VERSION,
        config={"dtype": cfg.model.dtype} | _products(cfg),
        inputs={"tokens": tokens_fingerprint, "model": model_fingerprint(cfg)},
    )


def expected_solve(cfg: Any, store_fingerprint: str, rate: float | None = None) -> Manifest:
    config = solve_key(cfg.compression, resolve_rate(cfg, rate))
    return Manifest(stage=SOLVE, code_version=SOLVE_VERSION, config=config, inputs={"store": store_fingerprint})


def expected_checkpoint(cfg: Any, solve_fingerprint: str) -> Manifest:
    return Manifest(stage=ASSEMBLE, code_version=ASSEMBLE_VERSION, config={"dtype": cfg.model.dtype},
                    inputs={"solve": solve_fingerprint})


def expected_export(cfg: Any, checkpoint_fingerprint: str) -> Manifest:
    """The engine formats of a checkpoint. Quantizations that could not be made (no llama.cpp in this venv) are
    listed in the manifest's ``not_quantized`` and added by a later export that can."""
    return Manifest(stage=EXPORT, code_version=EXPORT_VERSION, config=export_settings(cfg),
                    inputs={"checkpoint": checkpoint_fingerprint})


def expected_dense_evaluation(cfg: Any) -> Manifest:
    return Manifest(stage=EVALUATE, code_version=EVALUATE_VERSION, config=ArtifactPaths(cfg).eval_config(),
                    inputs={"model": model_fingerprint(cfg)})


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
