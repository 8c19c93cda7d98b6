"""Methods x rates at equal parameter count: WikiText-2 perplexity and (optionally) zero-shot accuracy ± stderr.

Runs the pipeline's own stages (prepare, tokenize, capture once, solve per rate and method), builds each
compressed model in memory and prints one Markdown table; JSON goes to outputs/benchmarks/quality.json and a plot
of perplexity against the achieved rate, one line per method, to quality.png beside it.

    .venv/bin/python benchmarks/quality.py                                   # perplexity, 32 windows, every method
    .venv/bin/python benchmarks/quality.py --zero-shot                       # + 500 items per task (hours on CPU)
    .venv/bin/python benchmarks/quality.py --zero-shot --rates 0.25 --max-windows 0 --limit 0   # the full splits
    .venv/bin/python benchmarks/quality.py calibration=paper                 # the paper's 128 x 2048 calibration

Methods: `modegpt` (this project's default solver), `paper` (the paper's MoDeGPT: `compression=paper`), `uniform`
(the paper's, the same sparsity in every layer), `weight_svd` (truncated SVD of each weight, rank for the same
parameter count), `layer_removal` (ShortGPT: whole blocks of lowest Block Influence) and `whitened_svd` (SVD-LLM:
SVD in each linear's whitened input space). The `paper+...` rows change one part of the paper's recipe each
(`--methods paper paper+shrink paper+budget`). Perplexities are cached by a digest of the weights under
<root>/benchmarks/perplexity-cache, so adding rows reruns only the new ones. Zero-shot answers
are cached per solve (lm-eval's request cache under <root>/cache/eval-requests), so an interrupted run resumes and
a rerun costs only what is new.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import torch

from pipeline.adapters import adapter_for
from pipeline.artifacts import (
    ArtifactPaths,
    achieved_rates,
    atomic_write_json,
    model_fingerprint,
    read_json,
    read_manifest,
)
from pipeline.artifacts import fingerprint as fingerprint_of
from pipeline.assembly import build_compressed_model, count_parameters
from pipeline.config import compose_config, validate
from pipeline.dense import load_model, load_tokenizer
from pipeline.evaluation.perplexity import perplexity, tokenize_stream, wikitext2_test_text
from pipeline.evaluation.plots import plot_vs_rate
from pipeline.evaluation.reporting import claim_warnings, ratio_pm
from pipeline.evaluation.retention import retention_figures
from pipeline.evaluation.tasks import PAPER_TASKS
from pipeline.methods import Method, method_named
from pipeline.readers import load_solution
from stages import capture, prepare, solve, tokenize

PAPER = ["compression=paper"]  # the paper's MoDeGPT exactly (conf/compression/paper.yaml)
# the module budget without the KL probe (the default before 2026-12)
RESIDUAL = ["compression.allocation=error", "compression.curve_scale=residual"]
# every layer solved from the shared store (one capture for every rate): the default before sequential calibration
# became it (2026-12-06), and what every row below that says SHARED was measured with
SHARED = ["compression.sequential=false"]
METHODS = {  # name -> overrides on top of the run's config
    "modegpt": [],  # this project's default solver (conf/compression/default.yaml: shape=deci)
    # ... with every module cut to any width (the default before 2026-12-05)
    "free": [*SHARED, "compression.shape=free"],
    "paper": PAPER,
    "uniform": [*PAPER, "compression.allocation=uniform"],
    # ablations (issue 15): one part of the paper's recipe changed at a time
    "paper+shrink": [*PAPER, "compression.mlp_refit=shrink"],
    "paper+budget": [*PAPER, "compression.allocation=error"],
    # the variants below were measured against the earlier default (curve_scale=residual) and keep it
    "sequential": [*RESIDUAL, "compression.sequential=true"],  # statistics on the compressed layers below
    "paper+sequential": [*PAPER, "compression.sequential=true"],
    # the module budget in units of a KL probe (the default 2026-12-02..05, now a candidate of the validated plan)
    "kl-scale": [*SHARED, "compression.allocation=error", "compression.curve_scale=kl"],
    "residual-scale": [*SHARED, *RESIDUAL],  # ... in units of E 1/‖h‖² (the default before)
    "kl-scale+sequential": ["compression.allocation=error", "compression.curve_scale=kl",
                            "compression.sequential=true"],
    # engine shapes (pipeline.engine_shapes): attention whole, per-layer MLP widths on a grid (DeciLM / llama.cpp
    # deci; 256 also suits vLLM and K-quants), or one MLP width (the family's own class)
    "deci": [*SHARED, "compression.shape=deci"],
    **{f"deci-{n}": [*SHARED, "compression.shape=deci", f"compression.round_to={n}"] for n in (32, 64, 128)},
    "stock": [*SHARED, "compression.shape=stock"],
    # the default shape's MLP budget by the paper's Block-Influence layer budgets, each taken from the layer's MLP
    # (attention whole): the rule that won on a held-out model (issue 28), with no curves and no probe
    "bi-mlp": [*SHARED, "compression.allocation=bi"],
    "uniform-mlp": [*SHARED, "compression.allocation=uniform"],  # ... every layer's MLP cut alike
    # the plan among kl, residual, bi and uniform whose model is closest to the dense one on held-out text
    # (the default 2026-12-05..06, before sequential calibration)
    "validated": [*SHARED, "compression.allocation=validated"],
    "validated-noprobe": [*SHARED, "compression.allocation=validated", "compression.candidates=[residual,bi,uniform]"],
    # ... with the chosen plan solved again on the compressed layers below each layer: the default since 2026-12-06
    "validated+sequential": ["compression.allocation=validated", "compression.sequential=true"],
    "fp32-products": [*SHARED, "calibration.product_precision=fp32"],  # from a store of FP32 products
    # baselines (conf/compression/<name>.yaml: a per-layer allocation, every layer from the shared store)
    **{name: [f"compression={name}"] for name in ("weight_svd", "layer_removal", "whitened_svd")},
}
DEFAULT_METHODS = ["modegpt", "paper", "uniform", "weight_svd", "layer_removal", "whitened_svd"]


def uses_temperature(row: dict[str, Any]) -> bool:
    """Rows whose allocation reads the BI temperature (the others show no ε): allocation=bi under a method that plans
    by the shared rules (``Method.plan``), not by its own."""
    method = Method.registry.get(row.get("solver", ""))
    return row.get("allocation") == "bi" and method is not None and method.plan is Method.plan


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer (name, dtype, shape, bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def cached_perplexity(model: torch.nn.Module, ids: torch.Tensor, seq_len: int, max_windows: int | None, source: str,
                      dtype: str, root: Path) -> float:
    """WikiText-2 perplexity, cached by the model's weights themselves (not by where or how they were made) and the
    windows, so adding a row reruns only it, a moved artifact still hits, and other benchmarks share the figures."""
    key = {"model": weights_digest(model), "seq_len": seq_len, "max_windows": max_windows, "source": source,
           "dtype": dtype}
    cached = root / "benchmarks" / "perplexity-cache" / f"{fingerprint_of(key)[:16]}.json"
    if cached.exists():
        return read_json(cached)["perplexity"]
    ppl = perplexity(model, ids, seq_len, max_windows=max_windows)["perplexity"]
    atomic_write_json(cached, {"perplexity": ppl, **key})
    return ppl


def compose_cfg(overrides: list[str]):
    cfg = compose_config(overrides)
    validate(cfg)
    return cfg


def compressed_model(dense: torch.nn.Module, adapter: Any, cfg: Any, solve_dir: Path) -> tuple[torch.nn.Module, int]:
    """The solved model in memory and its parameter count (the solve's, for methods evaluated as dense-shaped
    low-rank products)."""
    method = method_named(cfg.compression.method)
    if method.assemblable:
        plans, solutions, _ = load_solution(cfg)
        model = build_compressed_model(dense, adapter, plans, solutions)
        return model, count_parameters(model)
    return method.in_memory_model(dense, cfg.model.family, solve_dir), read_manifest(solve_dir).extra[
        "compressed_params"]


def _pm(value: float | None, stderr: float | None) -> str:
    if value is None:
        return ""
    return f"{100 * value:.2f}" + ("" if stderr is None else f" ± {100 * stderr:.2f}")


def print_table(rows: list[dict[str, Any]]) -> None:
    print("| method | target rate | ε | block params removed | params | perplexity | zero-shot avg ± se | "
          "retention | above-chance retention |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        eps = f"{r['epsilon']:g}" if uses_temperature(r) else ""
        zs = r.get("zero_shot") or {}
        print(f"| {r['method']} | {r['rate']:g} | {eps} | {r['block_rate']:.1%} | {r['params'] / 1e6:.1f}M | "
              f"{r['ppl']:.2f} | {_pm(zs.get('average'), zs.get('average_stderr'))} | "
              f"{ratio_pm(r.get('retention'), r.get('retention_stderr'))} | "
              f"{ratio_pm(r.get('margin_retention'), r.get('margin_retention_stderr'))} |")


def plot_rows(rows: list[dict[str, Any]], temperature: float, out: Path, title: str) -> None:
    """Perplexity against the achieved block rate, one line per method (an ε-sweep row is its own series)."""
    series: dict[str, list[tuple[float, float]]] = {}
    for r in rows[1:]:
        eps = r["epsilon"]
        name = r["method"] if eps is None or eps == temperature else f"{r['method']} (eps {eps:g})"
        series.setdefault(name, []).append((r["block_rate"], r["ppl"]))
    plot_vs_rate(series, "WikiText-2 perplexity", out, reference=rows[0]["ppl"], log_y=True, title=title,
                 xlabel="decoder-block parameters removed (achieved)", size=(7, 4.5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", type=float, nargs="+", default=[0.1, 0.2, 0.25, 0.3, 0.4])
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS),
                        help="rows; the paper+... rows are the solver ablations")
    parser.add_argument("--epsilons", type=float, nargs="*", default=[],
                        help="BI temperatures for a MoDeGPT sensitivity sweep at --epsilon-rate, e.g. 0.02 0.05 0.2")
    parser.add_argument("--epsilon-rate", type=float, default=0.3)
    parser.add_argument("--max-windows", type=int, default=32, help="first N windows; 0: the whole test split")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--probe-sequences", type=int, default=None,
                        help="an experiment: probe this many calibration sequences instead of the code's "
                             "PROBE_SEQUENCES (keyed apart, so the default's probe is not reused)")
    parser.add_argument("--zero-shot", action="store_true", help="also lm-eval zero-shot accuracy (offline tasks)")
    parser.add_argument("--zero-shot-rates", type=float, nargs="+", default=[],
                        help="with --zero-shot: only these rates (and dense); default: every rate")
    parser.add_argument("--tasks", nargs="+", default=list(PAPER_TASKS))
    parser.add_argument("--limit", type=int, default=500, help="items per task; 0: the full splits")
    parser.add_argument("--batch-size", type=int, default=None, help="lm-eval batch size (default: eval.batch_size)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. calibration=paper")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.probe_sequences is not None:
        from pipeline import solve_identity

        solve_identity.PROBE_SEQUENCES = args.probe_sequences
    base = list(args.overrides)
    cfg = compose_cfg(base)
    for stage in (prepare, tokenize, capture):
        stage.run(cfg)
    paths = ArtifactPaths(cfg)
    dense = load_model(cfg, paths.dense_model)
    tokenizer = load_tokenizer(cfg, paths.dense_model)
    text, source = wikitext2_test_text(cfg.eval.wikitext_path)
    ids = tokenize_stream(tokenizer, text)
    adapter = adapter_for(dense, cfg.model.family)
    dense_params, dense_block = adapter.total_params(), adapter.block_linear_params()
    max_windows = args.max_windows or None
    limit = args.limit or None
    batch_size = args.batch_size or cfg.eval.batch_size

    def zero_shot(model: torch.nn.Module, fingerprint: str) -> dict[str, Any] | None:
        if not args.zero_shot:
            return None
        from pipeline.evaluation import run_zero_shot

        return run_zero_shot(model, tokenizer, args.tasks, batch_size, limit, cfg.eval.offline, paths.root / "cache",
                             seed=cfg.eval.seed, average_metric=cfg.eval.average_metric,
                             request_cache=paths.eval_request_cache(fingerprint))

    def evaluate(model: torch.nn.Module, fingerprint: str, rate: float = 0.0) -> dict[str, Any]:
        ppl = cached_perplexity(model, ids, args.seq_len, max_windows, source, cfg.model.dtype, paths.root)
        wanted = not args.zero_shot_rates or rate == 0.0 or rate in args.zero_shot_rates
        return {"ppl": ppl, "zero_shot": zero_shot(model, fingerprint) if wanted else None}

    dense_row = {"method": "dense", "rate": 0.0, "epsilon": None, "params": dense_params, "block_rate": 0.0,
                 "model_rate": 0.0, **evaluate(dense, model_fingerprint(cfg, paths.dense_model))}
    rows = [dense_row]
    dense_zs = dense_row["zero_shot"]
    print(f"dense: ppl {dense_row['ppl']:.3f}"
          + (f" zero-shot {_pm(dense_zs['average'], dense_zs['average_stderr'])}" if dense_zs else ""), flush=True)
    jobs = [(m, r, None) for r in args.rates for m in args.methods]
    jobs += [("paper", args.epsilon_rate, e) for e in args.epsilons if e != cfg.compression.temperature]
    for method, rate, eps in jobs:
        start = time.perf_counter()
        over = [*base, *METHODS[method], f"compression.rate={rate}"]
        if eps is not None:
            over.append(f"compression.temperature={eps}")
        job_cfg = compose_cfg(over)
        capture.run(job_cfg)  # the run's store, or a row's own (calibration.product_precision)
        solve_dir = solve.run(job_cfg)
        model, params = compressed_model(dense, adapter, job_cfg, solve_dir)
        rates = achieved_rates(dense_params, dense_block, params)
        row = {"method": method, "rate": rate, "epsilon": eps if eps is not None else job_cfg.compression.temperature,
               "solver": job_cfg.compression.method, "allocation": job_cfg.compression.allocation,
               "params": params, "block_rate": rates["achieved_block_rate"], "model_rate": rates["achieved_model_rate"],
               **evaluate(model, read_manifest(solve_dir).fingerprint, rate)}
        if row["zero_shot"] is not None:
            figures = retention_figures(row["zero_shot"], dense_row["zero_shot"])
            row |= {k: v for k, v in figures.items() if k != "margin_retention_detail"}
        rows.append(row)
        zs = row["zero_shot"]
        zs_text = f" zero-shot {_pm(zs['average'], zs['average_stderr'])}" if zs else ""
        print(f"{method} rate {rate} eps {row['epsilon']}: ppl {row['ppl']:.3f}{zs_text} params {params} "
              f"(block rate {row['block_rate']:.4f}) [{time.perf_counter() - start:.0f} s]", flush=True)
        del model

    n_windows = min(ids.numel() // args.seq_len, max_windows or 10**9)
    print(f"\nModel {cfg.model.name}, calibration {paths.calibration_key}. WikiText-2 test perplexity ({source}; "
          f"{n_windows} windows of {args.seq_len} tokens{', the whole split' if max_windows is None else ''}).")
    if args.zero_shot:
        counts = {t: (v["n"], v["n_total"]) for t, v in dense_row["zero_shot"].items()
                  if isinstance(v, dict) and "acc" in v}
        print("Zero-shot (lm-eval, offline tasks, acc_norm where reported): items per task "
              + ", ".join(f"{t} {n}/{total}" for t, (n, total) in counts.items())
              + "; ± is one standard error; above-chance retention = mean over tasks of "
              "(acc − chance) / (dense acc − chance); each retention's ± is propagated from the two averages'.")
    for warning in claim_warnings({"wikitext2": {"windows": n_windows},
                                   "zero_shot": dense_row["zero_shot"] if args.zero_shot else None}):
        print(warning)
    print()
    print_table(rows)
    out = Path(cfg.paths.root) / "benchmarks" / "quality.json"
    atomic_write_json(out, {"source": source, "windows": n_windows, "seq_len": args.seq_len, "limit": limit,
                            "tasks": args.tasks if args.zero_shot else [], "calibration": paths.calibration_key,
                            "model": cfg.model.name, "rows": rows})
    plot_rows(rows, cfg.compression.temperature, out.with_suffix(".png"),
              f"{cfg.model.name}, calibration {paths.calibration_key}, {n_windows} windows of {args.seq_len}")
    print(f"\nwritten {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
