"""Where zero-shot evaluation time goes: items/s of lm-eval on the dense model against batch size and threads.

    .venv/bin/python benchmarks/zero_shot_speed.py                            # 60 items per task, batch 1..32
    .venv/bin/python benchmarks/zero_shot_speed.py --limit 100 --batch-sizes 8 16 --threads 1 2

Every run starts without lm-eval's request cache (each timing is a real evaluation of the same items), so the
table is the cost of a first evaluation; a repeated one is answered from the cache (seconds). Accuracy is printed
beside the speed because lm-eval's batches pad requests: the figures may move in the last digits with the batch
size, which is why the project keeps eval.batch_size fixed across compared runs.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch

from pipeline.artifacts import ArtifactPaths
from pipeline.config import compose_config, validate
from pipeline.dense import load_model, load_tokenizer
from pipeline.evaluation import run_zero_shot
from pipeline.evaluation.tasks import PAPER_TASKS
from stages import prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=60, help="items per task")
    parser.add_argument("--tasks", nargs="+", default=list(PAPER_TASKS))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=...")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cfg = compose_config(args.overrides)
    validate(cfg)
    prepare.run(cfg)
    paths = ArtifactPaths(cfg)
    model = load_model(cfg, paths.dense_model).eval()
    tokenizer = load_tokenizer(cfg, paths.dense_model)
    work = Path(cfg.paths.root) / "cache"
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for batch_size in args.batch_sizes:
            with tempfile.TemporaryDirectory() as tmp:  # a fresh request cache: nothing answered before
                start = time.perf_counter()
                zs = run_zero_shot(model, tokenizer, args.tasks, batch_size, args.limit, cfg.eval.offline, work,
                                   seed=cfg.eval.seed, request_cache=Path(tmp) / "requests")
                seconds = time.perf_counter() - start
            items = sum(v["n"] for v in zs.values() if isinstance(v, dict) and "acc" in v)
            rows.append((threads, batch_size, items, seconds, zs["average"], zs["average_stderr"]))
            print(f"threads {threads} batch {batch_size}: {items} items in {seconds:.1f} s "
                  f"({items / seconds:.2f} items/s), average {zs['average']:.4f}", flush=True)
    print(f"\n{cfg.model.name}, tasks {' '.join(args.tasks)}, {args.limit} items per task, "
          f"device {next(model.parameters()).device}\n")
    print("| threads | batch size | items | seconds | items/s | average ± stderr |")
    print("|---|---|---|---|---|---|")
    for threads, batch_size, items, seconds, average, stderr in rows:
        print(f"| {threads} | {batch_size} | {items} | {seconds:.1f} | {items / seconds:.2f} | "
              f"{average:.4f} ± {stderr:.4f} |")


if __name__ == "__main__":
    main()
