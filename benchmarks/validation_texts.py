"""How the held-out validation's candidates rank on different texts and by different measures (issue 28).

For each rate, every candidate's solve (made or reused as ``benchmarks/quality.py`` makes it) is applied in memory
exactly as ``allocation=validated`` applies it, and scored on

- ``heldout``: the calibration source's held-out windows (what the validation reads), and
- ``wikitext``: the first windows of WikiText-2 test (what the quality table scores, here at --seq-len),

- any ``--text NAME=SOURCE:PATH`` (a calibration source and its file: ``jsonl`` or ``wikitext2``), windows sampled
  as the calibration samples them (seed 0),

by mean KL to the dense model per token and by perplexity on the text's own next tokens.

    .venv/bin/python benchmarks/validation_texts.py --rates 0.1 0.25 0.4 --sequences 32
    .venv/bin/python benchmarks/lambada_jsonl.py outputs/benchmarks/lambada-passages.jsonl
    .venv/bin/python benchmarks/validation_texts.py --text lambada=jsonl:outputs/benchmarks/lambada-passages.jsonl
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import torch
from quality import METHODS, compose_cfg
from safetensors.torch import load_file

from pipeline.adapters import adapter_for
from pipeline.artifacts import ArtifactPaths, layer_file
from pipeline.calibration import calibration_stream, sample_windows
from pipeline.capture.heldout_scores import heldout_scores
from pipeline.dense import load_model, load_tokenizer
from pipeline.evaluation.perplexity import text_windows, tokenize_stream, wikitext2_test_text
from pipeline.methods import method_named
from pipeline.readers import heldout_tokens
from stages import capture, prepare, solve, tokenize

CANDIDATES = ["kl-scale", "residual-scale", "bi-mlp", "uniform-mlp"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", type=float, nargs="+", default=[0.1, 0.25, 0.4])
    parser.add_argument("--methods", nargs="+", default=CANDIDATES, choices=list(METHODS))
    parser.add_argument("--sequences", type=int, default=32, help="windows of each text")
    parser.add_argument("--seq-len", type=int, default=512, help="WikiText window length")
    parser.add_argument("--text", action="append", default=[], metavar="NAME=SOURCE:PATH",
                        help="another text to score on, e.g. lambada=jsonl:outputs/benchmarks/lambada-passages.jsonl")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=...")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cfg = compose_cfg(list(args.overrides))
    for stage in (prepare, tokenize, capture):
        stage.run(cfg)
    paths = ArtifactPaths(cfg)
    dense = load_model(cfg, paths.dense_model)
    adapter = adapter_for(dense, cfg.model.family)
    text, _ = wikitext2_test_text(cfg.eval.wikitext_path)
    tokenizer = load_tokenizer(cfg, paths.dense_model)
    stream = tokenize_stream(tokenizer, text)
    texts = {"heldout": heldout_tokens(cfg, args.sequences),
             "wikitext": text_windows(stream, args.seq_len, args.sequences)}
    for spec in args.text:
        name, _, where = spec.partition("=")
        source, _, path = where.partition(":")
        if not (name and source and path):
            raise SystemExit(f"--text {spec!r}: expected NAME=SOURCE:PATH, e.g. lambada=jsonl:passages.jsonl")
        _, tokens = calibration_stream(tokenizer, source, path)
        texts[name] = sample_windows(tokens, args.sequences, cfg.calibration.seq_len, seed=0)
    device = torch.device("cpu")
    for rate in args.rates:
        solves, method = {}, None
        for name in args.methods:
            job = compose_cfg([*args.overrides, *METHODS[name], f"compression.rate={rate}"])
            solves[name] = solve.run(job)
            method = method_named(job.compression.method)

        def variants(index: int, solves: dict[str, Path] = solves) -> dict[str, dict[str, torch.Tensor]]:
            return {name: load_file(str(layer_file(folder, index))) for name, folder in solves.items()}

        def apply(layer, tensors, method=method) -> None:
            method.apply_in_place(layer, adapter, tensors)

        print(f"\nrate {rate}: {args.sequences} windows per text")
        print("| text | candidate | KL to dense | perplexity | × dense |")
        print("|---|---|---|---|---|")
        for label, ids in texts.items():
            scores = heldout_scores(adapter, ids, cfg.calibration.batch_size, device, variants, apply)
            dense_ppl = math.exp(scores.dense_nll)
            print(f"| {label} {tuple(ids.shape)} | dense | 0 | {dense_ppl:.3f} | 1 |")
            for name in sorted(scores.kl, key=scores.kl.__getitem__):
                ppl = math.exp(scores.nll[name])
                print(f"| {label} | {name} | {scores.kl[name]:.4f} | {ppl:.3f} | {ppl / dense_ppl:.3f} |", flush=True)


if __name__ == "__main__":
    main()
