"""WikiText-2 perplexity with the standard protocol: test rows joined with blank lines, tokenized once,
cut into non-overlapping windows of the model's context length, mean token NLL over all windows."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pipeline.assets import AssetError
from pipeline.progress import progress
from pipeline.user_files import read_user_text

# The raw test split shipped beside the project (../shared/data), looked for relative to the working dir.
DEFAULT_WIKITEXT_TEST = Path("../shared/data/wikitext-2-raw/wiki.test.raw")


def wikitext2_test_text(path: str | Path | None = None) -> tuple[str, str]:
    """The test split as one string, and where it came from.

    A local raw file has one article line per row (CRLF ends, no blank rows): rows get their line end back
    and are joined with "\\n\\n" as the Hub protocol joins dataset rows. That is close to, not byte-exact
    with, the Hub's rows; the source is reported beside every figure.
    """
    candidate = Path(path) if path else DEFAULT_WIKITEXT_TEST
    if candidate.is_file():
        text = read_user_text(candidate, "eval.wikitext_path", "the UTF-8 WikiText-2 raw test file (wiki.test.raw)")
        rows = text.replace("\r\n", "\n").split("\n")
        return "\n\n".join(f"{row}\n" for row in rows if row), f"local:{candidate.resolve()}"
    if path:
        raise AssetError(f"eval.wikitext_path={str(path)!r} does not exist: expected a local wiki.test.raw")
    from datasets import load_dataset

    rows = load_dataset("wikitext", "wikitext-2-raw-v1", split="test")["text"]
    return "\n\n".join(rows), "hub:wikitext-2-raw-v1/test"


def tokenize_stream(tokenizer: Any, text: str) -> torch.Tensor:
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)


def text_windows(token_ids: torch.Tensor, seq_len: int, max_windows: int | None = None) -> torch.Tensor:
    """The first ``max_windows`` non-overlapping ``seq_len`` windows of a token stream [N, seq_len] (all if None)."""
    windows = token_ids[: (token_ids.numel() // seq_len) * seq_len].view(-1, seq_len)
    return windows if max_windows is None else windows[:max_windows]


@torch.no_grad()
def perplexity(
    model: torch.nn.Module,
    token_ids: torch.Tensor,
    seq_len: int,
    batch_size: int = 1,
    max_windows: int | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """exp(mean NLL) over non-overlapping ``seq_len`` windows (the tail shorter than a window is dropped)."""
    windows = text_windows(token_ids, seq_len, max_windows)
    if windows.shape[0] == 0:
        raise ValueError(f"the evaluation text has {token_ids.numel()} tokens, fewer than one window of {seq_len}")
    total_nll, total_tokens = 0.0, 0
    for batch in progress(windows.split(batch_size), desc="perplexity", unit="batch"):
        batch = batch.to(device)
        logits = model(batch, use_cache=False).logits.float()
        nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum")
        total_nll += float(nll)
        total_tokens += batch[:, 1:].numel()
    return {"perplexity": math.exp(total_nll / total_tokens), "windows": int(windows.shape[0]),
            "tokens": total_tokens, "seq_len": seq_len}
