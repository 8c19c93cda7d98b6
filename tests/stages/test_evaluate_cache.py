"""Resumable, cached evaluation: a killed `evaluate` sends only the missing requests to the model when rerun, a
second evaluation of the same model sends none, and the results equal an uncached run's."""

from pathlib import Path

import pytest
from conftest import compose_config, run_killed, tiny_overrides

from pipeline.artifacts import ArtifactPaths, model_fingerprint
from stages import evaluate


def _overrides(root: Path, model_dir: Path) -> list[str]:
    return [*tiny_overrides(root, model_dir, "llama"), "eval.limit=8", "eval.batch_size=2",
            "eval.tasks=[piqa,arc_easy]", "eval.perplexity=false"]


@pytest.fixture
def requests_sent(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of loglikelihood requests that reach the model, per call."""
    from lm_eval.models.huggingface import HFLM

    sent: list[int] = []
    original = HFLM.loglikelihood

    def counting(self, requests, *args, **kwargs):
        sent.append(len(requests))
        return original(self, requests, *args, **kwargs)

    monkeypatch.setattr(HFLM, "loglikelihood", counting)
    return sent


def _cached_answers(cfg) -> int:
    from sqlitedict import SqliteDict

    paths = ArtifactPaths(cfg)
    db = Path(f"{paths.eval_request_cache(model_fingerprint(cfg, paths.dense_model))}_rank0.db")
    if not db.exists():
        return 0
    with SqliteDict(str(db), flag="r") as cache:
        return len(cache)


def test_killed_evaluation_resumes_with_only_the_missing_requests(tmp_path, tiny_model_dirs, requests_sent) -> None:
    model_dir = tiny_model_dirs["llama"]
    # Reference: an uninterrupted run; its model is cached under another root, so nothing is shared.
    reference = evaluate.evaluate_dense(compose_config(_overrides(tmp_path / "ref", model_dir)))
    total = sum(requests_sent)
    assert total == 8 * 2 + 8 * 4  # piqa: 2 choices, arc_easy: 4 (first 8 items have 4)
    requests_sent.clear()

    overrides = _overrides(tmp_path / "killed", model_dir)
    assert run_killed("evaluate", "lm_eval.models.huggingface", "HFLM._model_call", overrides, on_call=12) == -9
    cfg = compose_config(overrides)
    cached = _cached_answers(cfg)
    assert 0 < cached < total
    resumed = evaluate.evaluate_dense(cfg)
    assert sum(requests_sent) == total - cached  # only the requests the killed run had not answered
    for task in ("piqa", "arc_easy"):
        for metric in ("acc", "acc_norm", "acc_stderr", "acc_norm_stderr"):
            assert resumed["zero_shot"][task][metric] == reference["zero_shot"][task][metric]

    requests_sent.clear()
    again = evaluate.evaluate_dense(compose_config([*overrides, "overwrite=[evaluate]"]))
    assert requests_sent == []  # evaluating the same model twice costs no model call
    assert again["zero_shot"]["average"] == reference["zero_shot"]["average"]


def test_request_cache_is_keyed_by_model_and_answer_changing_settings(tmp_path, tiny_model_dirs) -> None:
    base = _overrides(tmp_path, tiny_model_dirs["llama"])
    paths = ArtifactPaths(compose_config(base))
    assert paths.eval_request_cache("a") != paths.eval_request_cache("b")
    assert paths.eval_request_cache("a").is_relative_to(paths.root / "cache" / "eval-requests")
    more_items = ArtifactPaths(compose_config([*base, "eval.limit=100", "eval.tasks=[piqa]"]))
    assert more_items.eval_request_cache("a") == paths.eval_request_cache("a")  # answers are per request text
    other_batch = ArtifactPaths(compose_config([*base, "eval.batch_size=3"]))
    assert other_batch.eval_request_cache("a") != paths.eval_request_cache("a")
