"""The on-disk layout, in one package: artifact paths and file names, manifests, fingerprints and atomic writes.

- ``atomic``: fingerprints, file digests, atomic file and directory writes.
- ``manifest``: manifests, artifact states (reuse / resume / refuse), reading artifact JSON.
- ``identity``: what a run's inputs are (weights, calibration text), from the config and the input files alone.
- ``layout``: where each artifact lives (``ArtifactPaths``: names from those identities), its file names, and the
  rate of a run.
- ``expected``: the manifest each artifact must carry for a config, with the stages' code versions.
- ``aliases``, ``inventory``, ``legacy`` (imported by the CLI, not here): the ``latest/`` view DVC tracks,
  ``modegpt ls`` / ``gc``, and the layout before content-addressed names with ``modegpt migrate``.
Each artifact read back as a later stage's input: :mod:`pipeline.readers` (a layer above, beside the store).
"""

from .atomic import (
    atomic_dir,
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    canonical_json,
    file_digest,
    fingerprint,
    remove_stale_temps,
)
from .expected import (
    ASSEMBLE,
    ASSEMBLE_VERSION,
    CAPTURE,
    CAPTURE_VERSION,
    CONVERT_VERSION,
    EVALUATE,
    EVALUATE_VERSION,
    PREPARE,
    SOLVE,
    SOLVE_VERSION,
    TOKENIZE,
    TOKENIZE_VERSION,
    achieved_rates,
    conversion_manifest,
    expected_checkpoint,
    expected_dense_evaluation,
    expected_evaluation,
    expected_export,
    expected_solve,
    expected_store,
    expected_tokens,
    model_fingerprint,
    source_reference_manifest,
    text_fingerprint,
)
from .layout import (
    CANDIDATES_DIR,
    EVAL_KEYS,
    LAYERS_DIR,
    MANIFEST,
    METRICS,
    PLAN,
    TOKENS_FILE,
    ArtifactPaths,
    layer_file,
    resolve_rate,
)
from .manifest import (
    COMPLETE,
    PARTIAL,
    ArtifactError,
    Manifest,
    artifact_state,
    describe_mismatch,
    manifest_path,
    overwrites,
    prepare_output,
    read_json,
    read_manifest,
    require_complete,
    write_manifest,
)

__all__ = [
    "ASSEMBLE", "ASSEMBLE_VERSION", "CAPTURE", "CAPTURE_VERSION", "COMPLETE", "CONVERT_VERSION", "EVALUATE",
    "CANDIDATES_DIR", "EVALUATE_VERSION", "EVAL_KEYS", "LAYERS_DIR", "MANIFEST", "METRICS", "PARTIAL", "PLAN",
    "PREPARE", "SOLVE",
    "SOLVE_VERSION", "TOKENIZE", "TOKENIZE_VERSION", "TOKENS_FILE", "ArtifactError", "ArtifactPaths",
    "Manifest", "achieved_rates", "artifact_state", "atomic_dir", "atomic_path", "atomic_write_json",
    "atomic_write_text", "canonical_json", "conversion_manifest", "describe_mismatch", "expected_checkpoint",
    "expected_dense_evaluation", "expected_evaluation", "expected_export", "expected_solve", "expected_store",
    "expected_tokens",
    "file_digest", "fingerprint", "layer_file", "manifest_path", "model_fingerprint", "overwrites", "prepare_output",
    "read_json", "read_manifest", "remove_stale_temps", "require_complete", "resolve_rate", "source_reference_manifest",
    "text_fingerprint", "write_manifest",
]
