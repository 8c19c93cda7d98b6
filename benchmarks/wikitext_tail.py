"""An in-domain calibration source that does not leak: the WikiText-2 test articles after the evaluated windows.

    .venv/bin/python benchmarks/wikitext_tail.py outputs/benchmarks/wikitext-test-tail.raw
    .venv/bin/python benchmarks/quality.py calibration.source=wikitext2 calibration.name=wikitext-test-tail \\
        calibration.path=outputs/benchmarks/wikitext-test-tail.raw --methods modegpt --rates 0.25

WikiText-2's training split is not available offline, only the test file. `benchmarks/quality.py` scores the first
``--windows`` windows of ``--seq-len`` tokens of the test stream; this writes the test file's rows from the first
article that starts past them (plus a margin) as a raw file that ``calibration.source=wikitext2`` reads, so the
calibration text and the scored text share no row. Use it only with that many windows or fewer.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.config import compose_config, validate
from pipeline.dense import load_tokenizer
from pipeline.evaluation.perplexity import DEFAULT_WIKITEXT_TEST
from stages import prepare


def _is_article_heading(row: str) -> bool:
    return row.startswith(" = ") and not row.startswith(" = = ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides naming the model whose tokenizer counts tokens")
    parser.add_argument("--test-file", type=Path, default=DEFAULT_WIKITEXT_TEST)
    parser.add_argument("--windows", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--margin", type=int, default=4096, help="tokens skipped past the scored windows")
    args = parser.parse_args()
    cfg = compose_config(args.overrides)
    validate(cfg)
    tokenizer = load_tokenizer(cfg, prepare.run(cfg))  # the model's own tokenizer, as benchmarks/quality.py scores
    rows = [r for r in args.test_file.read_text(encoding="utf-8").replace("\r\n", "\n").split("\n") if r]
    # The scored stream joins rows with blank lines (pipeline.evaluation.perplexity.wikitext2_test_text).
    scored, seen, start = args.windows * args.seq_len + args.margin, 0, len(rows)
    for i, row in enumerate(rows):
        seen += len(tokenizer(f"{row}\n\n", add_special_tokens=False)["input_ids"])
        if seen > scored:
            start = i + 1
            break
    while start < len(rows) and not _is_article_heading(rows[start]):
        start += 1
    if start >= len(rows):
        raise SystemExit(f"the test file has no article past the first {scored} tokens")
    tail = rows[start:]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(tail) + "\n", encoding="utf-8")
    print(f"rows {start}..{len(rows)} of {len(rows)} (from {tail[0].strip()!r}) -> {args.out}")


if __name__ == "__main__":
    main()
