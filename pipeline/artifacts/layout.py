"""Where every artifact lives and what its files are called: derived from config keys only (never Hydra's run dir).

    <root>/models/<model>/                                     prepare: the dense model as a plain HF folder
    <root>/<model>/calib/<calibration>/tokens.safetensors      tokenize
    <store_root>/<model>/<calibration>/                        capture: the Zarr correlation store
    <root>/<model>/<calibration>/solve/<tag>/plan.json         solve, with layers/NNNNN.safetensors
    <root>/<model>/<calibration>/compressed/<tag>/             assemble: a from_pretrained checkpoint
    <root>/<model>/<calibration>/eval/<eval tag>/<tag>/metrics.json and <root>/<model>/eval/<eval tag>/dense/
    <root>/<model>/<calibration>/metrics/r<rate>.json          the latest metrics of one rate (for DVC)
    <root>/<model>/<calibration>/report/                       report
    <root>/cache/eval-requests/<key>_rank0.db                  lm-eval's request cache of one model (sqlite)

Each artifact directory also holds a ``manifest.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .atomic import fingerprint

MANIFEST = "manifest.json"
TOKENS_FILE = "tokens.safetensors"
PLAN = "plan.json"
METRICS = "metrics.json"
LAYERS_DIR = "layers"

# Eval keys that can change a loglikelihood answer to the same request text (batch composition changes padding).
REQUEST_CACHE_KEYS = ("batch_size",)
EVAL_KEYS = (
    "tasks", "limit", "batch_size", "num_fewshot", "offline", "average_metric", "seed", "perplexity", "wikitext_path",
    "perplexity_max_windows", "perplexity_batch_size",
)
# Compression keys that change the solver's output (everything but the rate list used for sweeps).
SOLVER_KEYS = (
    "method", "allocation", "temperature", "max_sparsity", "ridge_lambda", "nystrom_ridge", "eig_floor", "round_to",
    "mlp_selection", "mlp_refit",
)


def layer_file(solve_dir: Path, layer: int) -> Path:
    """One layer's solved factors inside a solve artifact."""
    return solve_dir / LAYERS_DIR / f"{layer:05d}.safetensors"


def resolve_rate(cfg: Any, rate: float | None = None) -> float:
    """The compression rate of a run: an explicit rate (sweeps) or ``compression.rate``."""
    return float(cfg.compression.rate if rate is None else rate)


def _rate_tag(rate: float) -> str:
    return f"r{rate:.3f}".rstrip("0").rstrip(".")


class ArtifactPaths:
    """Where each stage's artifact lives, derived from config keys only (never from Hydra's run dir)."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.root = Path(cfg.paths.root)
        self.store_root = Path(cfg.paths.store_root) if cfg.paths.store_root else self.root / "stores"

    @property
    def model_root(self) -> Path:
        return self.root / self.cfg.model.name

    @property
    def calibration_key(self) -> str:
        c = self.cfg.calibration
        return f"{c.name}-{c.num_samples}x{c.seq_len}-seed{c.seed}"

    @property
    def run_root(self) -> Path:
        """Everything derived from one model and one calibration set."""
        return self.model_root / self.calibration_key

    def rate(self, rate: float | None = None) -> float:
        return resolve_rate(self.cfg, rate)

    @property
    def dense_model(self) -> Path:
        """The dense model as a plain HF folder (only for sources that need converting, e.g. GGUF)."""
        return self.root / "models" / self.cfg.model.name

    @property
    def tokens(self) -> Path:
        return self.model_root / "calib" / self.calibration_key

    @property
    def tokens_file(self) -> Path:
        return self.tokens / TOKENS_FILE

    @property
    def store(self) -> Path:
        return self.store_root / self.cfg.model.name / self.calibration_key

    def compression_tag(self, rate: float | None = None) -> str:
        k = self.cfg.compression
        solver = {key: k[key] for key in SOLVER_KEYS}
        return f"{k.method}-{k.allocation}-{_rate_tag(self.rate(rate))}-{fingerprint(solver)[:8]}"

    @property
    def solves(self) -> Path:
        """The parent of every solve artifact (one per compression tag)."""
        return self.run_root / "solve"

    def module_curves(self, key: str) -> Path:
        """Module error curves of one store and solver setting (``compression.allocation=error``), shared by rates."""
        return self.solves / f"curves-{key[:12]}.safetensors"

    def solve(self, rate: float | None = None) -> Path:
        return self.solves / self.compression_tag(rate)

    def plan(self, rate: float | None = None) -> Path:
        return self.solve(rate) / PLAN

    def checkpoint(self, rate: float | None = None) -> Path:
        return self.run_root / "compressed" / self.compression_tag(rate)

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
        """The latest metrics of one rate at a path DVC can template (``metrics/r<rate>.json``)."""
        return self.run_root / "metrics" / f"r{self.rate(rate):g}.json"

    @property
    def report(self) -> Path:
        return self.run_root / "report"
