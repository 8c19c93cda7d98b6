"""allocation=validated: every candidate plan solved, applied in memory and scored on held-out sequences by its KL
to the dense model; the winner becomes the solve, its table is logged and recorded."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import compose_config, tiny_overrides

from pipeline.adapters import adapter_for
from pipeline.artifacts import CANDIDATES_DIR, ArtifactPaths, layer_file, read_manifest
from pipeline.calibration import CalibrationError, sample_windows
from pipeline.capture import output_head
from pipeline.capture.heldout_scores import heldout_scores
from pipeline.config import ConfigError, validate
from pipeline.readers import heldout_tokens, load_tokens
from pipeline.solving import validated
from pipeline.tiny import random_model, tiny_config
from stages import assemble, capture, solve, tokenize

VALIDATED = {"compression.allocation": "validated", "compression.candidates": "[kl,residual,bi,uniform]",
             "compression.validation_sequences": 3, "compression.rate": 0.3}


def _plans(target):
    return json.loads((target / "plan.json").read_text())


def test_the_winner_is_the_candidate_closest_to_the_dense_model(tmp_path, tiny_model_dirs, caplog) -> None:
    overrides = tiny_overrides(tmp_path, tiny_model_dirs["llama"], "llama", **VALIDATED)
    cfg = compose_config(overrides)
    validate(cfg)
    tokenize.run(cfg)
    capture.run(cfg)
    with caplog.at_level("INFO"):
        target = solve.run(cfg)
    plan = _plans(target)
    table = plan["validation"]["kl_to_dense"]
    assert set(table) == {"kl", "residual", "bi", "uniform"} and all(v > 0 for v in table.values())
    assert plan["chosen"] == min(table, key=table.get)
    # the held-out text's perplexity under each candidate, recorded beside the KL
    perplexities = plan["validation"]["perplexity"]
    assert set(perplexities) == set(table) and plan["validation"]["dense_perplexity"] > 1
    assert read_manifest(target).extra["validation"] == plan["validation"]
    assert "held-out validation (3 sequences x 32 tokens" in caplog.text and "<- chosen" in caplog.text
    assert not (target / CANDIDATES_DIR).exists()
    # The winner's layers are what a solve under that candidate alone writes.
    alone = {"bi": ["compression.allocation=bi"], "uniform": ["compression.allocation=uniform"]}.get(
        plan["chosen"], ["compression.allocation=error", f"compression.curve_scale={plan['chosen']}"])
    single = solve.run(compose_config([*overrides, *alone]))
    assert _plans(single)["layers"] == plan["layers"]
    for index in range(len(plan["layers"])):
        from safetensors.torch import load_file

        mine, theirs = load_file(str(layer_file(target, index))), load_file(str(layer_file(single, index)))
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[n], theirs[n]) for n in mine)
    assemble.run(cfg)


def test_a_resumed_validated_solve_keeps_its_winner_without_validating_again(tmp_path, tiny_model_dirs,
                                                                             monkeypatch) -> None:
    cfg = compose_config(tiny_overrides(tmp_path, tiny_model_dirs["llama"], "llama", **VALIDATED))
    tokenize.run(cfg)
    capture.run(cfg)
    target = solve.run(cfg)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["status"] = "partial"
    (target / "manifest.json").write_text(json.dumps(manifest))
    layer_file(target, 1).unlink()
    monkeypatch.setattr(validated, "heldout_scores", lambda *a, **k: pytest.fail("validated again"))
    assert solve.run(cfg) == target and layer_file(target, 1).exists()


def test_under_sequential_calibration_validation_chooses_the_plan_and_the_sequential_solve_makes_it(
        tmp_path, tiny_model_dirs) -> None:
    overrides = tiny_overrides(tmp_path, tiny_model_dirs["llama"], "llama", **VALIDATED,
                               **{"compression.sequential": "true"})
    cfg = compose_config(overrides)
    validate(cfg)
    tokenize.run(cfg)
    capture.run(cfg)
    target = solve.run(cfg)
    plan = _plans(target)
    assert read_manifest(target).extra["sequential"] is True and plan["chosen"] in plan["validation"]["kl_to_dense"]
    alone = {"bi": ["compression.allocation=bi"], "uniform": ["compression.allocation=uniform"]}.get(
        plan["chosen"], ["compression.allocation=error", f"compression.curve_scale={plan['chosen']}"])
    single = solve.run(compose_config([*overrides, *alone]))  # the chosen plan, solved sequentially alone
    plain = solve.run(compose_config([*overrides, "compression.sequential=false"]))
    from safetensors.torch import load_file

    for index in range(len(plan["layers"])):
        mine = load_file(str(layer_file(target, index)))
        assert all(torch.equal(mine[n], t) for n, t in load_file(str(layer_file(single, index))).items())
    differs = [not all(torch.equal(load_file(str(layer_file(target, i)))[n], t)
                       for n, t in load_file(str(layer_file(plain, i))).items()) for i in range(1, len(plan["layers"]))]
    assert any(differs)  # above layer 0 the sequential statistics are not the dense store's


@pytest.mark.parametrize("positions_at_once", [None, 5])  # the whole sequence, or slices of 5 positions
def test_heldout_scores_stream_blocks_as_the_whole_model_computes(monkeypatch, positions_at_once) -> None:
    torch.manual_seed(0)
    model = random_model(tiny_config("llama")).eval()
    if positions_at_once:
        monkeypatch.setattr(output_head, "LOGIT_BUDGET", positions_at_once * 2 * model.config.vocab_size)
    adapter = adapter_for(model, "llama")
    ids = torch.randint(0, model.config.vocab_size, (3, 16))

    def halve(layer, factor) -> None:
        layer.down_proj.weight.data.mul_(factor)

    variants = {"same": 1.0, "halved": 0.5}
    def layer_variants(index: int) -> dict[str, float]:
        return variants if index == 1 else dict.fromkeys(variants, 1.0)

    scores = heldout_scores(adapter, ids, 2, torch.device("cpu"), layer_variants, halve)
    with torch.no_grad():
        dense = F.log_softmax(model(ids).logits.double(), -1)
        adapter.layer(1).down_proj.weight.data.mul_(0.5)
        halved = F.log_softmax(model(ids).logits.double(), -1)
    expected = float((dense.exp() * (dense - halved)).sum()) / ids.numel()
    assert scores.kl["same"] == pytest.approx(0.0, abs=1e-9)
    assert scores.kl["halved"] == pytest.approx(expected, rel=1e-4) and expected > 1e-4

    def cross_entropy(log_probs: torch.Tensor) -> float:  # the next token of every position but the last
        return float(F.nll_loss(log_probs[:, :-1].flatten(0, 1), ids[:, 1:].flatten()))

    assert scores.dense_nll == pytest.approx(cross_entropy(dense), rel=1e-5)
    assert scores.nll["same"] == pytest.approx(scores.dense_nll, rel=1e-6)
    assert scores.nll["halved"] == pytest.approx(cross_entropy(halved), rel=1e-5)
    assert abs(scores.nll["halved"] - scores.dense_nll) > 1e-4


def test_heldout_windows_are_the_next_ones_and_never_calibration_windows(tmp_path, tiny_model_dirs) -> None:
    stream = torch.arange(1000)
    calibration = sample_windows(stream, 8, 10, seed=3)
    heldout = sample_windows(stream, 8, 10, seed=3, heldout=5)
    assert torch.equal(sample_windows(stream, 13, 10, seed=3)[8:], heldout)
    assert not set(calibration[:, 0].tolist()) & set(heldout[:, 0].tolist())
    with pytest.raises(CalibrationError, match=r"100 windows of 10, but calibration.num_samples=98 \+ "
                                               r"compression.validation_sequences=5 held out"):
        sample_windows(stream, 98, 10, seed=3, heldout=5)
    cfg = compose_config(tiny_overrides(tmp_path, tiny_model_dirs["llama"], "llama"))
    tokenize.run(cfg)
    ids = heldout_tokens(cfg, 4)
    assert ids.shape == (4, 32) and torch.equal(heldout_tokens(cfg, 4), ids)
    assert not {tuple(r) for r in ids.tolist()} & {tuple(r) for r in load_tokens(cfg)[0].tolist()}
    paths = ArtifactPaths(cfg)
    held = list(paths.solves.glob("heldout-*.safetensors"))  # beside the solves, not in the tokenize artifact
    assert len(held) == 1 and not list(paths.tokens.glob("heldout*"))


@pytest.mark.parametrize(("override", "message"), [
    ("compression.candidates=[kl,bogus]", "compression.candidates=['kl', 'bogus'] is invalid: expected a list among"),
    ("compression.candidates=[]", "compression.candidates=[] is invalid: expected distinct names, at least one"),
    ("compression.candidates=[bi,bi]", "expected distinct names"),
    ("compression.validation_sequences=0", "compression.validation_sequences=0 is invalid"),
    ("compression.method=weight_svd", "compression.allocation='validated' is invalid: expected bi, uniform or error"),
    ("compression.method=whitened_svd", "compression.candidates=['kl', 'residual', 'bi', 'uniform'] is invalid: "
     "expected only bi or uniform with compression.method=whitened_svd"),
    ("compression.candidates=[kl,fisher]", "compression.candidates=['kl', 'fisher'] names a retired curve scale: "
     "compression.curve_scale=fisher was retired"),
    ("compression.candidates=[kl-error,bi]", "compression.candidates=['kl-error', 'bi'] names a retired curve scale: "
     "compression.curve_scale=kl-error was retired"),
])
def test_bad_validation_settings_fail_in_one_line(override, message) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")) as error:
        validate(compose_config(["compression.allocation=validated", override]))
    assert "\n" not in str(error.value)
