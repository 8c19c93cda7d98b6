"""WikiText-2 perplexity of dense vs MoDeGPT vs baselines at several block compression rates.

Runs the pipeline's own stages (prepare, tokenize, capture once, solve per rate and method), builds each
compressed model in memory and prints one Markdown table; JSON goes to outputs/benchmarks/quality.json.

    .venv/bin/python benchmarks/quality.py --max-windows 8            # quick CPU run (first 8 windows)
    .venv/bin/python benchmarks/quality.py calibration=paper          # the paper's 128 x 2048 calibration

Baselines at equal parameter count: `uniform` (MoDeGPT with the same sparsity in every layer) and
`weight_svd` (each weight matrix replaced by its truncated SVD, rank chosen for the same parameter count).
"""

from __future__ import annotations

import argparse
import copy
import logging
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from pipeline.adapters import adapter_for
from pipeline.artifacts import ArtifactPaths, achieved_rates, atomic_write_json, layer_file, read_manifest
from pipeline.assembly import build_compressed_model, count_parameters
from pipeline.config import compose_config, validate
from pipeline.dense import load_model, load_tokenizer
from pipeline.evaluation.perplexity import perplexity, tokenize_stream, wikitext2_test_text
from pipeline.readers import load_solution
from stages import capture, prepare, solve, tokenize

METHODS = {  # name -> compression overrides
    "modegpt": ["compression.method=modegpt", "compression.allocation=bi"],
    "uniform": ["compression.method=modegpt", "compression.allocation=uniform"],
    "weight_svd": ["compression.method=weight_svd", "compression.allocation=uniform"],
}


def compose_cfg(overrides: list[str]):
    cfg = compose_config(overrides)
    validate(cfg)
    return cfg


def weight_svd_model(dense: torch.nn.Module, family: str, solve_dir: Path) -> torch.nn.Module:
    """The dense model with every block weight replaced by its low-rank product (same function as A·B)."""
    model = copy.deepcopy(dense)
    adapter = adapter_for(model, family)
    for i, layer in enumerate(adapter.layers()):
        factors = load_file(str(layer_file(solve_dir, i)))
        for name in ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "gate_proj", "down_proj"):
            module = getattr(layer, name)
            if module is not None:
                w = (factors[f"{name}.a"] @ factors[f"{name}.b"]).T
                module.weight.data.copy_(w.to(module.weight.dtype))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", type=float, nargs="+", default=[0.1, 0.2, 0.25, 0.3, 0.4])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--epsilons", type=float, nargs="*", default=[0.02, 0.05, 0.1, 0.2, 0.5],
                        help="BI temperatures for the sensitivity sweep (at --epsilon-rate)")
    parser.add_argument("--epsilon-rate", type=float, default=0.3)
    parser.add_argument("--max-windows", type=int, default=None, help="first N 2048-token windows (None: all)")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. calibration=paper")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
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

    def evaluate(model: torch.nn.Module) -> float:
        return perplexity(model, ids, args.seq_len, max_windows=args.max_windows)["perplexity"]

    rows = [{"method": "dense", "rate": 0.0, "epsilon": None, "ppl": evaluate(dense), "params": dense_params,
             "block_rate": 0.0, "model_rate": 0.0}]
    print(f"dense: ppl {rows[0]['ppl']:.3f}", flush=True)
    jobs = [(m, r, None) for r in args.rates for m in args.methods]
    jobs += [("modegpt", args.epsilon_rate, e) for e in args.epsilons if e != cfg.compression.temperature]
    for method, rate, eps in jobs:
        start = time.perf_counter()
        over = [*base, *METHODS[method], f"compression.rate={rate}"]
        if eps is not None:
            over.append(f"compression.temperature={eps}")
        job_cfg = compose_cfg(over)
        solve_dir = solve.run(job_cfg)
        manifest = read_manifest(solve_dir)
        if method == "weight_svd":
            model = weight_svd_model(dense, cfg.model.family, solve_dir)
            params = manifest.extra["compressed_params"]
        else:
            plans, solutions, _ = load_solution(job_cfg)
            model = build_compressed_model(dense, adapter, plans, solutions)
            params = count_parameters(model)
        rates = achieved_rates(dense_params, dense_block, params)
        row = {"method": method, "rate": rate, "epsilon": eps if eps is not None else job_cfg.compression.temperature,
               "ppl": evaluate(model), "params": params, "block_rate": rates["achieved_block_rate"],
               "model_rate": rates["achieved_model_rate"]}
        rows.append(row)
        print(f"{method} rate {rate} eps {row['epsilon']}: ppl {row['ppl']:.3f} params {params} "
              f"(block rate {row['block_rate']:.4f}) [{time.perf_counter() - start:.0f} s]", flush=True)
        del model

    n_windows = min(ids.numel() // args.seq_len, args.max_windows or 10**9)
    print(f"\nWikiText-2 test perplexity ({source}; {n_windows} windows of {args.seq_len} tokens), "
          f"model {cfg.model.name}, calibration {paths.calibration_key}\n")
    print("| method | target rate | ε | block params removed | model params removed | params | perplexity |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        eps = "" if r["method"] in ("dense", "weight_svd") else f"{r['epsilon']:g}"
        print(f"| {r['method']} | {r['rate']:g} | {eps} | {r['block_rate']:.1%} | {r['model_rate']:.1%} | "
              f"{r['params'] / 1e6:.1f}M | {r['ppl']:.2f} |")
    out = Path(cfg.paths.root) / "benchmarks" / "quality.json"
    atomic_write_json(out, {"source": source, "windows": n_windows, "seq_len": args.seq_len,
                            "calibration": paths.calibration_key, "model": cfg.model.name, "rows": rows})
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
