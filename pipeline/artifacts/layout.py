"""Where every artifact lives and what its files are called: named by what produced it (never Hydra's run dir).

Each directory name is a readable prefix plus a short fingerprint of the config subset and input identities that
produce it (:mod:`.identity`: weights content, calibration file content), so two runs differing only in
``calibration.path`` or ``model.source`` live side by side instead of colliding. Code versions are not in the
names: a stage whose code changed refuses its old artifact in place (``overwrite=[stage]``).

    <root>/models/<model>-<h>/                        prepare: the dense model (a HF folder, or a manifest pointing
                                                      at the weights); <h>: source, kind, revision, GGUF, weights
    <root>/<M>/calib/<C>/tokens.safetensors           tokenize; <M> = <model>-<h(weights)>,
                                                      <C> = <calibration>-<N>x<L>-seed<S>-<h(config, text, weights)>
    <store_root>/<M>/<C>-<dtype>/                     capture: the Zarr correlation store
    <root>/<M>/<C>-<dtype>/solve/<tag>/plan.json      solve, with layers/NNNNN.safetensors; <tag>: method, allocation,
                                                      rate, h(solver keys); beside the tags, curves-<h>.safetensors
                                                      and sensitivity-<h>.safetensors (allocation=error, every rate)
    <root>/<M>/<C>-<dtype>/compressed/<tag>/          assemble: a from_pretrained checkpoint
    <root>/<M>/<C>-<dtype>/eval/<eval tag>/<tag>/metrics.json and <root>/<M>/eval/<eval tag>/dense/
    <root>/<M>/<C>-<dtype>/metrics/r<rate>.json       the latest metrics of one rate
    <root>/<M>/<C>-<dtype>/report/                    report
    <root>/cache/eval-requests/<key>_rank0.db         lm-eval's request cache of one model (sqlite)
    <root>/latest/<model>/<calibration>-<N>x<L>-seed<S>/   the CLI's view of the latest run under these config
                                                      names, the paths dvc.yaml templates: <stage>.json pointers to
                                                      the artifacts above, copies of metrics/ and report/

Each artifact directory also holds a ``manifest.json``. ``old_layout`` names where a config's artifacts lived
before the fingerprints (config keys only), for ``modegpt migrate``.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

from pipeline.solve_identity import solve_key

from .atomic import fingerprint
from .identity import text_identity, weights_identity

MANIFEST = "manifest.json"
TOKENS_FILE = "tokens.safetensors"
PLAN = "plan.json"
METRICS = "metrics.json"
LAYERS_DIR = "layers"
CANDIDATES_DIR = "candidates"  # inside a solve: allocation=validated's candidates while they are scored
REPORT_DIR = "report"
LATEST = "latest"  # under paths.root: the human-named view of the latest run (see module doc)
MODEL_POINTERS = ("prepare",)  # stages whose pointer is per model; the others' are per calibration
KEY_HEX = 8  # hex digits of the fingerprint in a directory name

# Calibration keys that change the sampled tokens (tokenize's config; the batch size only batches the capture).
TOKENIZE_KEYS = ("source", "path", "num_samples", "seq_len", "seed")

# Eval keys that can change a loglikelihood answer to the same request text (batch composition changes padding).
REQUEST_CACHE_KEYS = ("batch_size",)
EVAL_KEYS = (
    "tasks", "limit", "batch_size", "num_fewshot", "offline", "average_metric", "seed", "perplexity", "wikitext_path",
    "perplexity_max_windows", "perplexity_batch_size",
)


def export_settings(cfg: Any) -> dict[str, Any]:
    """Every export setting (the schema's fields), lists sorted: what names an export beside its solve's tag."""
    x = cfg.export
    return {k: (sorted(str(v) for v in x[k]) if k in ("formats", "quantize") else x[k]) for k in x}


def layer_file(solve_dir: Path, layer: int) -> Path:
    """One layer's solved factors inside a solve artifact."""
    return solve_dir / LAYERS_DIR / f"{layer:05d}.safetensors"


def resolve_rate(cfg: Any, rate: float | None = None) -> float:
    """The compression rate of a run: an explicit rate (sweeps) or ``compression.rate``."""
    return float(cfg.compression.rate if rate is None else rate)


def _rate_tag(rate: float) -> str:
    return f"r{rate:.3f}".rstrip("0").rstrip(".")


def _short(identity: Any) -> str:
    return fingerprint(identity)[:KEY_HEX]


class ArtifactPaths:
    """Where each stage's artifact lives for a config (never Hydra's run dir).

    The keys are computed on first use, from the config and the input files only: naming a directory never needs
    an earlier stage's artifact, and a missing input file is reported by the stage, not here.
    """

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.root = Path(cfg.paths.root)
        self.store_root = Path(cfg.paths.store_root) if cfg.paths.store_root else self.root / "stores"

    @functools.cached_property
    def model_key(self) -> str:
        """``<model.name>-<h>`` from the weights' identity (content for a local folder or GGUF, else repo+revision)."""
        return f"{self.cfg.model.name}-{_short({'weights': weights_identity(self.cfg.model)})}"

    @property
    def model_root(self) -> Path:
        return self.root / self.model_key

    @property
    def calibration_name(self) -> str:
        """The readable part of a calibration's key (the whole key before content-addressed directories)."""
        c = self.cfg.calibration
        return f"{c.name}-{c.num_samples}x{c.seq_len}-seed{c.seed}"

    @functools.cached_property
    def calibration_key(self) -> str:
        """What tokenize produced: the calibration config, the text's identity and the tokenizing model's."""
        c = self.cfg.calibration
        identity = {"config": {k: c[k] for k in TOKENIZE_KEYS}, "text": text_identity(c),
                    "weights": weights_identity(self.cfg.model)}
        return f"{self.calibration_name}-{_short(identity)}"

    @property
    def run_key(self) -> str:
        """The store's key (tokens + forward dtype, capture's config), which everything solved from it shares."""
        precision = self.cfg.calibration.product_precision
        products = "" if precision == "fp64" else f"-{precision}products"  # products formed below FP64
        return f"{self.calibration_key}-{self.cfg.model.dtype}{products}"

    @property
    def run_root(self) -> Path:
        """Everything derived from one correlation store."""
        return self.model_root / self.run_key

    def rate(self, rate: float | None = None) -> float:
        return resolve_rate(self.cfg, rate)

    @functools.cached_property
    def dense_model(self) -> Path:
        """The dense model as a plain HF folder (GGUF sources), else a manifest naming the weights."""
        m = self.cfg.model
        identity = {"source": m.source, "source_kind": m.source_kind, "revision": m.revision,
                    "gguf_file": m.gguf_file, "weights": weights_identity(m)}
        return self.root / "models" / f"{m.name}-{_short(identity)}"

    @property
    def tokens(self) -> Path:
        return self.model_root / "calib" / self.calibration_key

    @property
    def tokens_file(self) -> Path:
        return self.tokens / TOKENS_FILE

    def heldout_tokens(self, key: str) -> Path:
        """Held-out windows of the calibration source (allocation=validated) beside the solves that read them, not
        in the tokenize stage's artifact: named by a digest of the calibration's key, the count and the sampling
        rule, which its metadata holds in full."""
        return self.solves / f"heldout-{key[:12]}.safetensors"

    @property
    def store(self) -> Path:
        return self.store_root / self.model_key / self.run_key

    def compression_tag(self, rate: float | None = None) -> str:
        k = self.cfg.compression
        return f"{k.method}-{k.allocation}-{_rate_tag(self.rate(rate))}-{fingerprint(solve_key(k))[:8]}"

    @property
    def solves(self) -> Path:
        """The parent of every solve artifact (one per compression tag)."""
        return self.run_root / "solve"

    def module_curves(self, key: str) -> Path:
        """Module error curves of one store and solver setting (``compression.allocation=error``), shared by rates."""
        return self.solves / f"curves-{key[:12]}.safetensors"

    def output_sensitivity(self, key: str) -> Path:
        """The KL probe's per-module sensitivities of one store and probe setting (``curve_scale=kl``),
        shared by every solver setting whose curves they scale."""
        return self.solves / f"sensitivity-{key[:12]}.safetensors"

    def solve(self, rate: float | None = None) -> Path:
        return self.solves / self.compression_tag(rate)

    def plan(self, rate: float | None = None) -> Path:
        return self.solve(rate) / PLAN

    def checkpoint(self, rate: float | None = None) -> Path:
        return self.run_root / "compressed" / self.compression_tag(rate)

    def export(self, rate: float | None = None) -> Path:
        """The compressed model in serving engines' formats (``hf/``, ``model-<dtype>.gguf``, quantized GGUFs): one
        directory per solve and export settings."""
        key = fingerprint(export_settings(self.cfg))[:KEY_HEX]
        return self.run_root / "export" / f"{self.compression_tag(rate)}-{key}"

    def eval_config(self) -> dict[str, Any]:
        """Everything that changes an evaluation's numbers."""
        e = self.cfg.eval
        conf = {k: (list(e[k]) if k == "tasks" else e[k]) for k in EVAL_KEYS}
        return conf | {"seq_len": self.cfg.model.max_seq_len, "dtype": self.cfg.model.dtype}

    @property
    def eval_tag(self) -> str:
        """Evaluations under different eval configs live side by side (eval=default vs eval=full)."""
        return f"eval-{fingerprint(self.eval_config())[:8]}"

    @property
    def evaluations(self) -> Path:
        """The parent of this eval config's evaluations (one per compression tag)."""
        return self.run_root / "eval" / self.eval_tag

    def evaluation(self, rate: float | None = None) -> Path:
        return self.evaluations / self.compression_tag(rate)

    def eval_request_cache(self, model_fingerprint: str) -> Path:
        """lm-eval's request cache for one model (``use_cache`` prefix: lm-eval adds ``_rank<N>.db``).

        Keyed by the model's fingerprint (checkpoint or dense weights) and what changes a request's answer (batch
        size, dtype, context length, device), not by the task list or limit: requests are cached by their own text,
        so a larger limit or another task reuses every answer already computed.
        """
        e = self.cfg.eval
        key = {"model": model_fingerprint, **{k: e[k] for k in REQUEST_CACHE_KEYS},
               "seq_len": self.cfg.model.max_seq_len, "dtype": self.cfg.model.dtype, "device": self.cfg.device}
        return self.root / "cache" / "eval-requests" / fingerprint(key)[:16]

    @property
    def dense_evaluation(self) -> Path:
        return self.model_root / "eval" / self.eval_tag / "dense"

    def rate_metrics(self, rate: float | None = None) -> Path:
        """The latest metrics of one rate (``metrics/r<rate>.json``)."""
        return self.run_root / "metrics" / f"r{self.rate(rate):g}.json"

    @property
    def report(self) -> Path:
        return self.run_root / REPORT_DIR

    # The latest view: named from config keys only, so dvc.yaml can template these paths.
    @property
    def latest_model(self) -> Path:
        return self.root / LATEST / self.cfg.model.name

    @property
    def latest_run(self) -> Path:
        return self.latest_model / self.calibration_name

    def pointer(self, stage: str) -> Path:
        """The JSON pointer to a stage's latest artifact (path, fingerprint, status)."""
        return (self.latest_model if stage in MODEL_POINTERS else self.latest_run) / f"{stage}.json"

    def latest_metrics(self, rate: float | None = None) -> Path:
        return self.latest_run / "metrics" / f"r{self.rate(rate):g}.json"

    @property
    def latest_report(self) -> Path:
        return self.latest_run / REPORT_DIR

    def old_layout(self) -> dict[str, Path]:
        """Where this config's artifacts lived before content-addressed names (config keys only)."""
        name, cal = self.cfg.model.name, self.calibration_name
        return {"model": self.root / "models" / name, "tokens": self.root / name / "calib" / cal,
                "store": self.store_root / name / cal, "run": self.root / name / cal,
                "dense evaluations": self.root / name / "eval"}


# Where each kind of artifact sits in the current layout, relative to paths.root (the store: to paths.store_root).
# `modegpt ls` marks an artifact found anywhere else as the old layout.
_H = f"[0-9a-f]{{{KEY_HEX}}}"
_M = rf"[^/]+-{_H}"
_RUN = rf"{_M}/[^/]+-\d+x\d+-seed\d+-{_H}-[a-z0-9]+(-[a-z0-9]+products)?"  # run_key (ArtifactPaths)
CURRENT_LAYOUT = {
    "model": re.compile(rf"models/{_M}"),
    "tokens": re.compile(rf"{_M}/calib/[^/]+-\d+x\d+-seed\d+-{_H}"),
    "solve": re.compile(rf"{_RUN}/solve/[^/]+"),
    "checkpoint": re.compile(rf"{_RUN}/compressed/[^/]+"),
    "export": re.compile(rf"{_RUN}/export/[^/]+"),
    "eval": re.compile(rf"{_M}/eval/eval-{_H}/dense|{_RUN}/eval/eval-{_H}/[^/]+"),
    "report": re.compile(rf"{_RUN}/{REPORT_DIR}"),
}
STORE_LAYOUT = re.compile(_RUN)


def in_current_layout(kind: str, relative: str) -> bool:
    """Whether an artifact of ``kind`` at ``relative`` (a POSIX path under its root) is where this layout puts it."""
    pattern = STORE_LAYOUT if kind == "store" else CURRENT_LAYOUT.get(kind)
    return pattern is not None and pattern.fullmatch(relative) is not None
