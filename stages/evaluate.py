"""Stage `evaluate`: WikiText-2 perplexity and lm-eval zero-shot accuracy of the dense and compressed models.

The dense model's metrics are an artifact of their own (per eval config), computed once and reused as the
reference for every rate's retention ratio. Results go to ``metrics.json`` beside a manifest.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from pipeline.artifacts import (
    COMPLETE,
    METRICS,
    ArtifactPaths,
    Manifest,
    atomic_dir,
    atomic_write_json,
    expected_dense_evaluation,
    expected_evaluation,
    manifest_path,
    model_fingerprint,
    prepare_output,
    read_json,
    write_manifest,
)
from pipeline.dense import load_model, load_tokenizer, resolve_device, torch_dtype
from pipeline.evaluation.perplexity import perplexity, tokenize_stream, wikitext2_test_text
from pipeline.evaluation.reporting import claim_warnings, percent_pm, ratio_pm
from pipeline.evaluation.retention import retention_figures
from pipeline.inputs import check_model_source
from pipeline.readers import checkpoint_dir

log = logging.getLogger(__name__)

def evaluate_model(model: torch.nn.Module, tokenizer: Any, cfg: Any, work_dir: Path,
                   request_cache: Path | None = None) -> dict[str, Any]:
    """Perplexity and zero-shot results of one model, as a flat JSON-able dict (zero-shot requests cached in
    ``request_cache``, see ``run_zero_shot``)."""
    e = cfg.eval
    device = resolve_device(cfg.device)
    model.to(device)
    out: dict[str, Any] = {}
    if e.perplexity:
        start = time.perf_counter()
        text, source = wikitext2_test_text(e.wikitext_path)
        ppl = perplexity(model, tokenize_stream(tokenizer, text), cfg.model.max_seq_len, e.perplexity_batch_size,
                         e.perplexity_max_windows, device)
        out["wikitext2"] = ppl | {"source": source, "seconds": round(time.perf_counter() - start, 1)}
        log.info("WikiText-2 perplexity %.3f (%d windows of %d)", ppl["perplexity"], ppl["windows"], ppl["seq_len"])
    if e.tasks:
        from pipeline.evaluation import run_zero_shot

        start = time.perf_counter()
        zs = run_zero_shot(model, tokenizer, list(e.tasks), e.batch_size, e.limit, e.offline, work_dir,
                           num_fewshot=e.num_fewshot, seed=e.seed, average_metric=e.average_metric,
                           request_cache=request_cache)
        out["zero_shot"] = zs | {"seconds": round(time.perf_counter() - start, 1)}
        log.info("zero-shot average %.4f over %s", zs["average"], ", ".join(e.tasks))
    return out


def _write(target: Path, manifest: Manifest, metrics: dict[str, Any]) -> None:
    manifest.status = COMPLETE
    with atomic_dir(target) as tmp:
        atomic_write_json(tmp / METRICS, metrics)
        write_manifest(tmp, manifest)


def check_inputs(cfg: Any) -> None:
    """What the user named (the model, lm-eval's task names) is checked before a model loads or a run is recorded."""
    check_model_source(cfg, hub=False)
    if cfg.eval.tasks and not cfg.eval.offline:
        from pipeline.evaluation.tasks import check_stock_tasks

        check_stock_tasks(list(cfg.eval.tasks))


def evaluate_dense(cfg: Any) -> dict[str, Any]:
    check_inputs(cfg)
    paths = ArtifactPaths(cfg)
    expected = expected_dense_evaluation(cfg)
    target = paths.dense_evaluation
    if prepare_output(target, expected, cfg.overwrite) == "skip":
        log.info("reusing dense metrics %s", target / METRICS)
        return read_json(target / METRICS)
    log.info("evaluating the dense model %s", cfg.model.name)
    model = load_model(cfg, paths.dense_model)
    metrics = {"model": cfg.model.name, "rate": 0.0, "compressed": False,
               "params": sum(p.numel() for p in model.parameters())}
    cache = paths.eval_request_cache(model_fingerprint(cfg, paths.dense_model))
    metrics |= evaluate_model(model, load_tokenizer(cfg, paths.dense_model), cfg, paths.root / "cache", cache)
    _write(target, expected, metrics)
    return metrics


def run(cfg: Any, rate: float | None = None) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import pipeline.assembly  # noqa: F401 - registers the compressed classes with the Auto factories

    paths = ArtifactPaths(cfg)
    dense = evaluate_dense(cfg)
    ckpt = checkpoint_dir(cfg, rate)
    ckpt_manifest = read_json(manifest_path(ckpt))
    expected = expected_evaluation(cfg, ckpt_manifest["fingerprint"])
    target = paths.evaluation(rate)
    if prepare_output(target, expected, cfg.overwrite) == "skip":
        log.info("reusing metrics %s", target / METRICS)
        if not paths.rate_metrics(rate).exists() or read_json(paths.rate_metrics(rate)).get("tag") != target.name:
            atomic_write_json(paths.rate_metrics(rate), read_json(target / METRICS) | {"tag": target.name})
        return target
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch_dtype(cfg.model.dtype)).eval()
    extra = ckpt_manifest["extra"]
    metrics = {"model": cfg.model.name, "compressed": True, "checkpoint": str(ckpt),
               "rate": extra["target_block_rate"], "achieved_block_rate": extra["achieved_block_rate"],
               "achieved_model_rate": extra["achieved_model_rate"], "params": extra["compressed_params"],
               "dense_params": extra["dense_params"], "method": cfg.compression.method,
               "allocation": cfg.compression.allocation, "temperature": cfg.compression.temperature}
    log.info("evaluating %s", ckpt)
    cache = paths.eval_request_cache(ckpt_manifest["fingerprint"])
    metrics |= evaluate_model(model, AutoTokenizer.from_pretrained(ckpt), cfg, paths.root / "cache", cache)
    metrics["dense"] = {k: dense[k] for k in ("wikitext2", "zero_shot") if k in dense}
    if "zero_shot" in metrics and "zero_shot" in dense:
        metrics |= retention_figures(metrics["zero_shot"], dense["zero_shot"])
        zs, dzs = metrics["zero_shot"], dense["zero_shot"]
        log.info("zero-shot retention %s, above-chance %s (%s vs dense %s)",
                 ratio_pm(metrics["retention"], metrics["retention_stderr"]),
                 ratio_pm(metrics["margin_retention"], metrics["margin_retention_stderr"]) or "n/a",
                 percent_pm(zs["average"], zs.get("average_stderr"), 2),
                 percent_pm(dzs["average"], dzs.get("average_stderr"), 2))
    for warning in claim_warnings(metrics):  # said beside the figures it qualifies, not only in the report
        log.warning("%s", warning)
    if "wikitext2" in metrics and "wikitext2" in dense:
        metrics["perplexity_ratio"] = metrics["wikitext2"]["perplexity"] / dense["wikitext2"]["perplexity"]
    _write(target, expected, metrics)
    atomic_write_json(paths.rate_metrics(rate), metrics | {"tag": target.name})
    return target
