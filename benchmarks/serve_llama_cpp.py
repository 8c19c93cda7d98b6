"""llama.cpp on this machine: the dense model against its compressed exports, where people serve GGUFs.

Runs in the llama.cpp venv (`make engines`):

    .venv-llama/bin/python benchmarks/serve_llama_cpp.py       # dense, 25% and 40% (compression.shape=deci)
    .venv-llama/bin/python benchmarks/serve_llama_cpp.py --rates 0.25 --max-windows 8 compression.round_to=64

For each model and GGUF type: file size, prompt tokens/s (one --prompt-tokens batch), generation tokens/s (greedy,
--new-tokens), and WikiText-2 perplexity inside llama.cpp on the same non-overlapping 2048-token windows as the
pipeline's evaluation (transformers' figure for the same weights is printed beside it). Then: whether llama.cpp's
greedy tokens from the F32 file equal the HF compressed model's, and the size/quality frontier (the compressed model
at Q4_K_M against the dense model at lower-bit quantizations). The compressed models come from the pipeline's own
stages (solve, assemble, export: reused when current).
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from quality import cached_perplexity

from pipeline.artifacts import ArtifactPaths
from pipeline.assembly import load_compressed
from pipeline.assets import gguf_source
from pipeline.config import compose_config, validate
from pipeline.dense import load_model, load_tokenizer
from pipeline.evaluation.perplexity import tokenize_stream, wikitext2_test_text
from pipeline.export.gguf_file import quantize_gguf, write_gguf
from pipeline.export.layout import engine_model
from stages import assemble, capture, export, prepare, solve, tokenize

log = logging.getLogger("llama_cpp_bench")
GGML_TYPE_F32 = 0
PROMPTS = ["The history of the city begins", "In mathematics, a prime number is"]


def llama(path: Path, n_ctx: int, **kwargs: Any) -> Any:
    import llama_cpp

    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=512, n_threads=2, verbose=False, **kwargs)


def llama_perplexity(path: Path, windows: torch.Tensor) -> float:
    """exp(mean NLL) of every window's tokens after its first, as pipeline.evaluation.perplexity counts them."""
    llm = llama(path, windows.shape[1], logits_all=True)
    total, count = 0.0, 0
    for window in windows.tolist():
        llm.reset()
        llm.eval(window)
        logits = np.asarray(llm.scores[: len(window) - 1], dtype=np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        total -= float(logp[np.arange(len(window) - 1), window[1:]].sum())
        count += len(window) - 1
    return math.exp(total / count)


def speeds(path: Path, prompt_tokens: int, new_tokens: int) -> tuple[float, float]:
    """(prompt tokens/s, generation tokens/s) of one run after a warm-up."""
    llm = llama(path, prompt_tokens + new_tokens + 8)
    prompt = [int(t) for t in np.random.default_rng(0).integers(300, 20000, prompt_tokens)]
    llm.eval(prompt[:16])
    llm.reset()
    start = time.perf_counter()
    llm.eval(prompt)
    prompt_speed = prompt_tokens / (time.perf_counter() - start)
    llm.reset()
    llm.eval(prompt[:8])
    start, made = time.perf_counter(), 0
    for _ in llm.generate(prompt[:8], temp=0.0, reset=False):
        made += 1
        if made == new_tokens:
            break
    return prompt_speed, made / (time.perf_counter() - start)


def interleaved_speeds(paths: list[Path], rounds: int, prompt_tokens: int,
                       new_tokens: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each file's prompt and generation speeds over `rounds` rounds, every round visiting every file in turn, so a
    slow spell of the machine falls on all files alike instead of on whichever was measured then."""
    runs: list[list[tuple[float, float]]] = [[] for _ in paths]
    for round_index in range(rounds):
        for runs_of, path in zip(runs, paths, strict=True):
            runs_of.append(speeds(path, prompt_tokens, new_tokens))
        log.info("speed round %d/%d done", round_index + 1, rounds)
    return [(np.array([r[0] for r in rs]), np.array([r[1] for r in rs])) for rs in runs]


def greedy_matches(model: torch.nn.Module, tokenizer: Any, f32: Path, new_tokens: int) -> list[bool]:
    llm = llama(f32, 256, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32)
    out = []
    for text in PROMPTS:
        ids = tokenizer(text)["input_ids"]
        with torch.no_grad():
            want = model.generate(torch.tensor([ids]), max_new_tokens=new_tokens, do_sample=False)[0, len(ids):]
        llm.reset()
        got = []
        for token in llm.generate(ids, temp=0.0, reset=True):
            got.append(int(token))
            if len(got) == new_tokens:
                break
        out.append(got == want.tolist())
    return out


def compressed_export(overrides: list[str], rate: float) -> tuple[Any, Path]:
    cfg = compose_config([*overrides, f"compression.rate={rate}"])
    validate(cfg)
    for stage in (prepare, tokenize, capture, solve, assemble, export):
        stage.run(cfg)
    return cfg, ArtifactPaths(cfg).export()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", type=float, nargs="+", default=[0.25, 0.4])
    parser.add_argument("--max-windows", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--dense-quants", nargs="+", default=["q4_k_m", "q3_k_m", "q2_k"])
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks/llama_cpp"))
    parser.add_argument("--rounds", type=int, default=5, help="interleaved speed rounds; the median is reported")
    parser.add_argument("--speed-only", action="store_true",
                        help="sizes and tokens/s only (no perplexity, no greedy check): a quick idle-machine rerun")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (compression.shape=deci is added)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    overrides = ["compression.shape=deci", "export.quantize=[q4_k_m]", *args.overrides]
    cfg = compose_config(overrides)
    validate(cfg)
    prepare.run(cfg)
    paths = ArtifactPaths(cfg)
    tokenizer = load_tokenizer(cfg, paths.dense_model)
    text, source = wikitext2_test_text(cfg.eval.wikitext_path)
    ids = tokenize_stream(tokenizer, text)
    seq_len = cfg.model.max_seq_len
    windows = ids[: (ids.numel() // seq_len) * seq_len].view(-1, seq_len)[: args.max_windows]

    args.out.mkdir(parents=True, exist_ok=True)
    dense = load_model(cfg, paths.dense_model)
    files: dict[str, dict[str, Path]] = {"dense": {}}
    hf_ppl: dict[str, float] = {}
    dense_f16 = args.out / "dense-f16.gguf"
    if not dense_f16.exists():
        write_gguf(engine_model(dense), dense_f16, "f16", paths.dense_model, source_gguf=gguf_source(cfg.model))
    files["dense"]["f16"] = dense_f16
    for quant in args.dense_quants:
        path = args.out / f"dense-{quant}.gguf"
        if not path.exists():
            quantize_gguf(dense_f16, path, quant)
        files["dense"][quant] = path
    def hf_perplexity(model: torch.nn.Module) -> float:  # quality.py's figure for the same weights, if it has one
        return cached_perplexity(model, ids, seq_len, args.max_windows, source, cfg.model.dtype, paths.root)

    if not args.speed_only:
        hf_ppl["dense"] = hf_perplexity(dense)
    greedy: dict[str, list[bool]] = {}
    for rate in args.rates:
        name = f"deci {rate:g}"
        rate_cfg, exported = compressed_export(overrides, rate)
        files[name] = {"f16": exported / "model-f16.gguf", "q4_k_m": exported / "model-q4_k_m.gguf"}
        model = load_compressed(ArtifactPaths(rate_cfg).checkpoint())
        f32 = args.out / f"deci-{rate:g}-f32.gguf"
        write_gguf(engine_model(model), f32, "f32", exported / "hf", source_gguf=gguf_source(cfg.model))
        if not args.speed_only:
            greedy[name] = greedy_matches(model, tokenizer, f32, args.new_tokens)
            hf_ppl[name] = hf_perplexity(model)

    listed = [(name, kind, path) for name, by_type in files.items() for kind, path in by_type.items()]
    measured = interleaved_speeds([path for _, _, path in listed], args.rounds, args.prompt_tokens, args.new_tokens)
    print(f"\nllama.cpp (llama-cpp-python), 2 threads; perplexity on {windows.shape[0]} windows x {seq_len}; "
          f"speeds: median of {args.rounds} interleaved rounds [min-max]")
    print("| model | GGUF | MiB | prompt tok/s | gen tok/s | ppl llama.cpp | ppl transformers (fp32) |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for (name, kind, path), (prompt_speed, gen_speed) in zip(listed, measured, strict=True):
        ppl = math.nan if args.speed_only else llama_perplexity(path, windows)
        rows.append((name, kind, path.stat().st_size / 2**20, ppl))
        print(f"| {name} | {kind} | {rows[-1][2]:.1f} | {np.median(prompt_speed):.0f} "
              f"[{prompt_speed.min():.0f}-{prompt_speed.max():.0f}] | {np.median(gen_speed):.1f} "
              f"[{gen_speed.min():.1f}-{gen_speed.max():.1f}] | {ppl:.2f} | {hf_ppl.get(name, math.nan):.2f} |",
              flush=True)
    print("\ngreedy tokens, llama.cpp F32 (F32 KV cache) vs the HF compressed model, "
          f"{args.new_tokens} new tokens per prompt:")
    for name, matches in greedy.items():
        print(f"  {name}: {sum(matches)}/{len(matches)} prompts identical")
    print("\nsize/quality frontier (smallest first):")
    for name, kind, mib, ppl in sorted(rows, key=lambda r: r[2]):
        print(f"  {mib:7.1f} MiB  ppl {ppl:7.2f}  {name} {kind}")


if __name__ == "__main__":
    main()
