import subprocess
import sys

import pytest
from conftest import REPO, compose_config

from pipeline.config import ConfigError, preset_hint, validate
from pipeline.methods import METHODS


def test_default_config_composes_and_validates() -> None:
    cfg = compose_config()
    validate(cfg)
    assert cfg.model.name == "smollm2-135m"
    assert cfg.model.source_kind == "gguf_package"
    assert cfg.calibration.num_samples == 32 and cfg.calibration.seq_len == 512
    assert cfg.compression.allocation == "validated" and cfg.compression.mlp_refit == "shrink"


def test_paper_preset_is_the_papers_algorithm() -> None:
    cfg = compose_config(["compression=paper"])
    validate(cfg)
    k = cfg.compression
    assert (k.allocation, k.mlp_refit, k.temperature) == ("bi", "paper", 0.1)


@pytest.mark.parametrize("model", ["llama2-7b", "llama2-13b", "llama2-70b", "llama3-8b", "llama3-70b", "opt-125m",
                                   "opt-350m", "opt-1.3b", "opt-2.7b", "opt-6.7b", "opt-13b", "opt-30b", "opt-66b"])
def test_every_model_config_composes(model: str) -> None:
    cfg = compose_config([f"model={model}"])
    validate(cfg)
    assert cfg.model.name == model


@pytest.mark.parametrize("scale", ["residual", "kl"])
def test_every_curve_scale_composes(scale: str) -> None:
    cfg = compose_config([f"compression.curve_scale={scale}"])
    validate(cfg)
    assert cfg.compression.curve_scale == scale


def test_paper_calibration_is_one_override_away() -> None:
    cfg = compose_config(["calibration=paper"])
    assert (cfg.calibration.num_samples, cfg.calibration.seq_len) == (128, 2048)


@pytest.mark.parametrize(
    "override, key",
    [
        ("compression.rate=1.5", "compression.rate"),
        ("compression.rate=-0.1", "compression.rate"),
        ("compression.allocation=random", "compression.allocation"),
        ("compression.curve_scale=bogus", "compression.curve_scale"),
        ("calibration.num_samples=0", "calibration.num_samples"),
        ("calibration.source=books", "calibration.source"),
        ("device=tpu", "device"),
        ("overwrite=[capture,bogus]", "overwrite"),
    ],
)
def test_bad_values_fail_validation_naming_the_key(override: str, key: str) -> None:
    cfg = compose_config([override])
    with pytest.raises(ConfigError, match=key):
        validate(cfg)


@pytest.mark.parametrize("override", ["compression.rate=abc", "calibration.num_samples=many", "model=not-a-model"])
def test_type_errors_and_unknown_groups_fail_at_compose_time(override: str) -> None:
    with pytest.raises(Exception):  # noqa: B017 - Hydra raises several error types
        compose_config([override])


@pytest.mark.parametrize(
    "override, needle",
    [("compression.rate=abc", "compression.rate=abc"), ("model=nope", "model/nope"), ("compression.rate=2", "[0, 1)")],
)
def test_cli_reports_bad_input_in_one_line(override: str, needle: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "stages.cli", "tokenize", override], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0] and lines[0].startswith("modegpt: error:")


def test_cli_rejects_unknown_stage() -> None:
    proc = subprocess.run([sys.executable, "-m", "stages.cli", "compile"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "unknown stage 'compile'" in proc.stderr


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["eval.num_fewshot=5"], "eval.num_fewshot"),  # offline tasks ship no training split for shots
        (["eval.tasks=[boolq]"], "eval.tasks"),  # the default calibration text is BoolQ's validation passages
        (["eval.tasks=[mmlu]"], "eval.tasks"),
    ],
)
def test_eval_settings_that_cannot_work_are_refused_up_front(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        validate(compose_config(overrides))


# A retired option (pipeline.config.RETIRED) is refused in one line that says what replaced it, before Hydra composes
# (a key gone from the schema would otherwise fail there in several lines).
RETIRED_LINES = {
    "compression.mlp_selection=greedy": "compression.mlp_selection=greedy was retired (it lost to leverage: "
                                        "docs/results.md): remove it (leverage is the only Type-I selection)",
    "compression.mlp_selection=energy": "compression.mlp_selection=energy was retired (it lost to leverage: "
                                        "docs/results.md): remove it (leverage is the only Type-I selection)",
    "+compression.mlp_selection=leverage": "compression.mlp_selection was retired (greedy and energy lost to "
                                           "leverage, the paper's and the only Type-I selection left: "
                                           "docs/results.md): remove it",
    "calibration.fisher=true": "calibration.fisher was retired (the Fisher-weighted sums lost to the plain ones, and "
                               "the gradient-energy scale to kl, which needs no backward pass at capture: "
                               "docs/results.md): remove it",
    "compression.fisher_mix=0.5": "compression.fisher_mix was retired (Fisher-weighted correlations lost to the plain "
                                  "ones: docs/results.md): remove it",
    "compression.curve_scale=fisher": "compression.curve_scale=fisher was retired (it lost to kl, which needs no "
                                      "backward pass at capture: docs/results.md): use compression.curve_scale=kl",
    "compression.curve_scale=kl-error": "compression.curve_scale=kl-error was retired (it never beat kl by more than "
                                        "2% among the options kept: docs/results.md): use compression.curve_scale=kl",
    "compression.sequential_target=dense": "compression.sequential_target=dense was retired (it lost to layer, each "
                                           "layer's own output: docs/results.md): remove it",
    "compression.sequential_target=layer": "compression.sequential_target was retired (compression.sequential=true "
                                           "refits each layer's own output, the only target left: docs/results.md): "
                                           "remove it",
}


@pytest.mark.parametrize("override", list(RETIRED_LINES))
def test_retired_options_are_refused_in_one_line(override: str) -> None:
    with pytest.raises(ConfigError) as info:
        compose_config([override])
    assert str(info.value) == RETIRED_LINES[override]


def test_validate_refuses_a_retired_value_of_a_kept_key() -> None:
    cfg = compose_config()
    cfg.compression.curve_scale = "kl-error"  # as a YAML of the user's would set it, past the overrides' check
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    assert str(info.value) == RETIRED_LINES["compression.curve_scale=kl-error"]


def test_every_retired_entry_is_refused_and_names_what_to_do() -> None:
    from pipeline.config import RETIRED, retired

    for name, (why, instead) in RETIRED.items():
        line = retired(name)
        assert line is not None and "\n" not in line and line.startswith(f"{name} was retired ({why}")
        assert line.endswith(instead) and instead
    assert retired("compression.curve_scale=kl") is None and retired("compression.rate=0.3") is None


def test_composing_a_config_does_not_import_transformers() -> None:
    """The schema comes from every method's settings, so composing imports the methods; transformers (seconds to
    import) stays out until a stage loads a model."""
    code = ("import sys; from pipeline.config import compose_config; compose_config([]); "
            "print(sorted(m for m in sys.modules if m == 'transformers' or m.startswith('transformers.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO,
                         timeout=120)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_method_the_default_settings_refuse_has_a_preset_that_validates(method) -> None:
    try:
        validate(compose_config([f"compression.method={method}"]))
        return  # runs on the default's settings: no preset needed
    except ConfigError as error:
        assert f"compression={method} selects it with its own settings" in str(error)
    cfg = compose_config([f"compression={method}"])
    validate(cfg)
    assert cfg.compression.method == method and cfg.compression.sequential is False
    assert cfg.compression.allocation in ("bi", "uniform")


def test_the_preset_hint_names_a_preset_only_where_its_file_exists() -> None:
    assert preset_hint("no_such_method") == ""
    assert preset_hint("weight_svd") == "; compression=weight_svd selects it with its own settings"


@pytest.mark.parametrize("method", ["weight_svd", "layer_removal"])
def test_a_baseline_on_the_default_settings_is_pointed_to_its_preset(method) -> None:
    for overrides in ([], ["compression.allocation=uniform"]):  # refused for its allocation, then its sequential
        with pytest.raises(ConfigError, match=f"compression={method} selects it with its own settings"):
            validate(compose_config([f"compression.method={method}", *overrides]))
