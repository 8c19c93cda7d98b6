"""llama.cpp (through llama-cpp-python, `make engines`) runs the exported GGUFs of engine-shaped tiny models.

The F32 file's logits equal the HF compressed model's (the KV cache also in F32, so nothing is rounded on the
way: agreement to ~1e-6 of the logits' scale, asserted at 1e-4); the quantized files load and generate; the
exported tokenizer tokenises like the HF one.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.export.gguf_file import quantize_gguf, write_gguf
from pipeline.export.layout import engine_model
from pipeline.tiny import byte_tokenizer, tiny_engine_shaped

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by `make engines`")
pytestmark = pytest.mark.engines

GGML_TYPE_F32 = 0
TEXT = "The quick brown fox jumps over the lazy dog."


def _load(path: Path, **kwargs) -> "llama_cpp.Llama":
    return llama_cpp.Llama(model_path=str(path), n_ctx=128, n_threads=2, verbose=False, **kwargs)


@pytest.fixture(params=[("llama", [32, 96, 64]), ("qwen2", [48, 16, 96]), ("mistral", [64, 64, 64])],
                ids=["llama-deci", "qwen2-deci-biases", "mistral-stock"])
def exported(request, tmp_path):
    model_type, widths = request.param
    model = tiny_engine_shaped(model_type, widths)
    byte_tokenizer().save_pretrained(tmp_path / "tok")
    path = write_gguf(engine_model(model), tmp_path / "model-f32.gguf", "f32", tmp_path / "tok")
    return model, path, tmp_path


def test_f32_logits_equal_the_hf_model(exported) -> None:
    model, path, _ = exported
    ids = byte_tokenizer()(TEXT)["input_ids"]
    llm = _load(path, logits_all=True, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32)
    llm.eval(ids)
    got = np.asarray(llm.scores[: len(ids)])
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_tokenizer_matches_hf(exported) -> None:
    _, path, _ = exported
    llm = _load(path, vocab_only=True)
    for text in (TEXT, "naïve café, 3.14 — ok\n\tbye"):
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == byte_tokenizer()(text)["input_ids"]


@pytest.mark.parametrize("quant", ["q8_0", "q4_k_m"])
def test_quantized_files_load_and_generate(exported, quant) -> None:
    model, path, tmp_path = exported
    out = quantize_gguf(path, tmp_path / f"model-{quant}.gguf", quant)
    assert out.stat().st_size < path.stat().st_size
    llm = _load(out)
    result = llm.create_completion("The", max_tokens=8, temperature=0.0)
    assert result["usage"]["completion_tokens"] >= 1


def test_llama_cpp_server_answers_a_completion(exported) -> None:
    """The README's serving command: llama-cpp-python's OpenAI-compatible server on the exported GGUF."""
    import json
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    _, path, _ = exported
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--host", "127.0.0.1",
                               "--port", str(port), "--n_ctx", "128"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", method="POST",
                                         data=json.dumps({"prompt": "The", "max_tokens": 4, "temperature": 0}).encode(),
                                         headers={"Content-Type": "application/json"})
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    answer = json.loads(response.read())
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(1)
        assert answer["usage"]["completion_tokens"] >= 1 and "text" in answer["choices"][0]
    finally:
        server.terminate()
        server.wait(timeout=30)
