"""Greedy text from a compressed checkpoint, with and without the KV cache: the two must be the same text.

    .venv/bin/python benchmarks/generate_sample.py                       # the default run's 25% checkpoint
    .venv/bin/python benchmarks/generate_sample.py --checkpoint outputs/.../compressed/<tag>

With the cache, each new token attends to keys and values cached at the layer's compressed widths; without
it, the whole sequence is recomputed every step. A cache the attention never fills (the transformers 5.24
failure) gives different text here, or raises.
"""

from __future__ import annotations

import argparse
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import pipeline.assembly  # noqa: F401 - registers the compressed classes
from pipeline.artifacts import ArtifactPaths
from pipeline.config import compose_config, validate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a compressed checkpoint directory (default: this config's)")
    parser.add_argument("--prompt", default="The capital of France is")
    parser.add_argument("--new-tokens", type=int, default=40)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides that pick the default checkpoint")
    args = parser.parse_args()
    if args.checkpoint is None:
        cfg = compose_config(args.overrides)
        validate(cfg)
        args.checkpoint = str(ArtifactPaths(cfg).checkpoint())
    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint)
    model = AutoModelForCausalLM.from_pretrained(args.checkpoint, dtype=torch.float32).eval()
    ids = tokenizer(args.prompt, return_tensors="pt")
    texts = {}
    for use_cache in (True, False):
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=args.new_tokens, do_sample=False, use_cache=use_cache,
                                 pad_token_id=tokenizer.eos_token_id)
        texts[use_cache] = tokenizer.decode(out[0], skip_special_tokens=True)
        print(f"use_cache={use_cache}: {texts[use_cache]!r}")
    same = texts[True] == texts[False]
    print(f"checkpoint {args.checkpoint}: cached and uncached text {'identical' if same else 'DIFFER'}")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
