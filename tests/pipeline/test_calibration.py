import json
from pathlib import Path

import pytest
import torch

from pipeline.calibration import CalibrationError, boolq_passages, calibration_documents, tokenize_documents
from pipeline.tiny import byte_tokenizer


def test_embedded_boolq_passages_are_unique_wikipedia_paragraphs() -> None:
    passages = boolq_passages()
    assert len(passages) == len(set(passages)) > 2500
    assert sum(len(p) for p in passages) > 1_000_000  # enough for the paper's 128 x 2048 tokens


def test_local_wikitext_raw_file_normalises_line_ends(tmp_path: Path) -> None:
    raw = tmp_path / "wiki.train.raw"
    raw.write_bytes(b" = Title = \r\n Some text . \r\n")
    docs = calibration_documents("wikitext2", str(raw))
    assert docs[:2] == [" = Title = ", " Some text . "] and all("\r" not in d for d in docs)


def test_local_alpaca_json(tmp_path: Path) -> None:
    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps([{"instruction": "Add", "input": "1 and 2", "output": "3"},
                                {"instruction": "Greet", "input": "", "output": "Hello"}]))
    assert calibration_documents("alpaca", str(data)) == ["Add\n1 and 2\n3", "Greet\nHello"]
    data.write_text(json.dumps({"not": "a list"}))
    with pytest.raises(CalibrationError, match="expected a JSON list"):
        calibration_documents("alpaca", str(data))


def test_missing_file_and_bad_jsonl_are_clear(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="does not exist"):
        calibration_documents("wikitext2", str(tmp_path / "nope.raw"))
    bad = tmp_path / "c4.jsonl"
    bad.write_text('{"text": "a"}\n{"content": "b"}\n')
    with pytest.raises(CalibrationError, match="line 2: expected a 'text' field"):
        calibration_documents("jsonl", str(bad))


def test_documents_are_joined_with_blank_lines() -> None:
    tok = byte_tokenizer()
    ids = tokenize_documents(tok, ["ab", "  ", "cd"])
    assert tok.decode(ids.tolist()) == "ab\n\ncd" and ids.dtype == torch.long
