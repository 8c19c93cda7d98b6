"""Capture: store values equal a naive full-forward computation; resume, refusal, corruption, locking, DDP."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import FAMILIES, compose_config, run_killed, tiny_overrides
from filelock import FileLock

from pipeline.adapters import adapter_for, output_source
from pipeline.artifacts import ArtifactError, ArtifactPaths, expected
from pipeline.capture import STAT_NAMES, CorrelationStore
from pipeline.dense import load_model
from pipeline.readers import load_tokens, open_store
from stages import capture, tokenize

REPO = Path(__file__).resolve().parents[2]


def _naive_sums(cfg) -> list[dict[str, torch.Tensor]]:
    """Every statistic from one full forward pass over all samples, with hooks on every block."""
    ids, _ = load_tokens(cfg)
    model = load_model(cfg, ArtifactPaths(cfg).dense_model)
    adapter = adapter_for(model, cfg.model.family)
    heads = adapter.head_layout()
    sums: list[dict[str, torch.Tensor]] = []
    handles = []
    for layer in adapter.layers():
        s: dict[str, torch.Tensor] = {}
        sums.append(s)

        def gram(key, s=s):
            return lambda m, a: s.__setitem__(key, a[0].reshape(-1, a[0].shape[-1]).double().T
                                              @ a[0].reshape(-1, a[0].shape[-1]).double())

        def attention_input(m, a, s=s, layer=layer):
            x = a[0].reshape(-1, a[0].shape[-1]).double()
            s["attn_gram"] = x.T @ x
            # q and k recomputed from the weights (Phi-3's are rows of one fused projection)
            for key, proj, n in (("q_energy", layer.q_proj, heads.num_heads), ("k_energy", layer.k_proj,
                                                                                 heads.num_kv_heads)):
                out = x @ proj.weight.double().T + (0 if proj.bias is None else proj.bias.double())
                s[key] = out.square().sum(0).view(n, heads.head_dim)

        def block_io(m, a, o, s=s):
            out = o[0] if isinstance(o, tuple) else o
            s["bi_cos"] = F.cosine_similarity(a[0].double(), out.double(), dim=-1).sum()
            s["inv_resid_in"] = (1.0 / a[0].double().square().sum(-1)).sum()
            s["inv_resid_out"] = (1.0 / out.double().square().sum(-1)).sum()
            s["tokens"] = torch.tensor(float(a[0].shape[0] * a[0].shape[1]), dtype=torch.float64)

        handles += [
            layer.attention_input.register_forward_pre_hook(attention_input),
            layer.mlp_hidden.register_forward_pre_hook(gram("mlp_gram")),
            output_source(layer.up_proj)[0].register_forward_pre_hook(gram("mlp_in_gram")),
            output_source(layer.o_proj)[0].register_forward_pre_hook(gram("o_in_gram")),
            layer.block.register_forward_hook(block_io),
        ]
    with torch.no_grad():
        model(ids, use_cache=False)
    for h in handles:
        h.remove()
    return sums


def _store_values(cfg) -> list[dict[str, np.ndarray]]:
    store = CorrelationStore(ArtifactPaths(cfg).store)
    n = len(list((store.path / "layers").glob("*.json")))
    return [{k: v.numpy() for k, v in store.read_layer(i).items()} for i in range(n)]


def test_store_equals_naive_full_forward(tiny_cfg) -> None:
    tokenize.run(tiny_cfg)
    path = capture.run(tiny_cfg)
    _, manifest = open_store(tiny_cfg)
    assert manifest.status == "complete" and manifest.extra["tokens"] == 8 * 32
    expected = _naive_sums(tiny_cfg)
    got = _store_values(tiny_cfg)
    assert len(got) == len(expected) == 3
    for layer, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert set(g) == set(STAT_NAMES)
        for key in STAT_NAMES:
            np.testing.assert_allclose(g[key], e[key].numpy(), rtol=1e-5, atol=1e-6, err_msg=f"{key} layer {layer}")
        assert g["tokens"] == 8 * 32
    assert (path / "correlations.zarr" / "zarr.json").is_file()


def test_rerun_on_finished_store_does_nothing(tiny_cfg) -> None:
    tokenize.run(tiny_cfg)
    path = capture.run(tiny_cfg)
    stamps = {p: p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()}
    capture.run(tiny_cfg)
    assert stamps == {p: p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()}


def _captured_and_twin(tmp_path: Path, model_dir: Path, family: str = "llama") -> tuple[list[str], list[str]]:
    """Two identical jobs in separate roots, both tokenized; the first one captured (the reference)."""
    reference = tiny_overrides(tmp_path / "reference", model_dir, family)
    twin = tiny_overrides(tmp_path / "twin", model_dir, family)
    for overrides in (reference, twin):
        tokenize.run(compose_config(overrides))
    capture.run(compose_config(reference))
    return reference, twin


@pytest.mark.parametrize("family", FAMILIES)
def test_kill_and_resume_gives_identical_store(tmp_path: Path, tiny_model_dirs, family: str) -> None:
    base, other = _captured_and_twin(tmp_path, tiny_model_dirs[family], family)
    assert run_killed("capture", "pipeline.capture.store", "CorrelationStore.write_layer", other) == -9
    cfg_b = compose_config(other)
    records = sorted(p.name for p in (ArtifactPaths(cfg_b).store / "layers").glob("*.json"))
    assert records == ["00000.json"]
    with pytest.raises(ArtifactError, match="incomplete"):
        open_store(cfg_b)
    writes = []
    original = CorrelationStore.write_layer

    def spy(self, layer, *a, **k):
        writes.append(layer)
        return original(self, layer, *a, **k)

    CorrelationStore.write_layer = spy
    try:
        capture.run(cfg_b)
    finally:
        CorrelationStore.write_layer = original
    assert writes == [1, 2]  # finished layers are not redone
    a_vals, b_vals = _store_values(compose_config(base)), _store_values(cfg_b)
    for x, y in zip(a_vals, b_vals, strict=True):
        for key in STAT_NAMES:
            assert np.array_equal(x[key], y[key]), key


def test_store_from_other_job_is_refused(tmp_path: Path, tiny_model_dirs, monkeypatch) -> None:
    base = tiny_overrides(tmp_path, tiny_model_dirs["opt"], "opt")
    tokenize.run(compose_config(base))
    capture.run(compose_config(base))
    # Another forward dtype is another store beside this one (same tokens), not a conflict.
    changed = ArtifactPaths(compose_config([*base, "model.dtype=float64"]))
    assert changed.store != ArtifactPaths(compose_config(base)).store
    assert changed.tokens == ArtifactPaths(compose_config(base)).tokens
    # In its own directory, a store differs only by what no config names: here, the capture code's version.
    monkeypatch.setattr(expected, "CAPTURE_VERSION", "capture-0")
    with pytest.raises(ArtifactError, match="code version 'capture-1' != 'capture-0'"):
        capture.run(compose_config(base))
    with pytest.raises(ArtifactError, match="captured for another model or calibration"):
        open_store(compose_config(base))


def test_corrupted_or_truncated_chunk_is_detected(tmp_path: Path, tiny_model_dirs) -> None:
    cfg = compose_config(tiny_overrides(tmp_path, tiny_model_dirs["llama"], "llama"))
    tokenize.run(cfg)
    path = capture.run(cfg)
    store = CorrelationStore(path)
    chunk = store.zarr_path / "mlp_gram" / "c" / "1" / "0" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[100] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="mlp_gram layer 1 does not match its checksum"):
        store.read_layer(1)
    store.read_layer(0)
    chunk.write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.raises(ArtifactError, match="mlp_gram layer 1"):
        store.read_layer(1)


def test_a_held_lock_stops_a_second_capture(tmp_path: Path, tiny_model_dirs) -> None:
    cfg = compose_config(tiny_overrides(tmp_path, tiny_model_dirs["llama"], "llama"))
    tokenize.run(cfg)
    store = ArtifactPaths(cfg).store
    store.parent.mkdir(parents=True)
    with FileLock(str(store) + ".lock"):
        with pytest.raises(ArtifactError, match="another capture is writing"):
            capture.run(cfg)


def test_two_gloo_ranks_equal_single_process(tmp_path: Path, tiny_model_dirs) -> None:
    single, ddp = _captured_and_twin(tmp_path, tiny_model_dirs["llama"])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    with socket.socket() as sock:  # a free port, so parallel or repeated runs never collide
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
           "-m", "stages.cli", "capture", *ddp]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, manifest = open_store(compose_config(ddp))
    assert manifest.extra["world_size"] == 2
    for x, y in zip(_store_values(compose_config(single)), _store_values(compose_config(ddp)), strict=True):
        for key in STAT_NAMES:
            np.testing.assert_allclose(x[key], y[key], rtol=1e-12, atol=1e-9, err_msg=key)
