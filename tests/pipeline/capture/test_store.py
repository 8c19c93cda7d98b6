"""The correlation store on its own: layer records, prefetching iteration, checksums."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.artifacts import ArtifactError
from pipeline.capture import CorrelationStore, LayerWriter

SHAPES = {"attn_gram": (6, 6), "mlp_gram": (10, 10), "tokens": ()}


def _store(tmp_path: Path, layers: int = 4) -> tuple[CorrelationStore, list[dict[str, torch.Tensor]]]:
    store = CorrelationStore(tmp_path / "store")
    store.create_arrays(layers, SHAPES)
    g = torch.Generator().manual_seed(0)
    written = []
    for layer in range(layers):
        sums = {n: torch.randn(s, generator=g, dtype=torch.float64) for n, s in SHAPES.items()}
        store.write_layer(layer, sums, fingerprint="job", seconds=0.0)
        written.append(sums)
    return store, written


def test_iter_layers_yields_each_requested_layer_in_order(tmp_path: Path) -> None:
    store, written = _store(tmp_path)
    seen = list(store.iter_layers([3, 0, 2]))
    assert [layer for layer, _ in seen] == [3, 0, 2]
    for layer, sums in seen:
        assert sums.keys() == written[layer].keys()
        assert all(torch.equal(sums[n], written[layer][n]) for n in sums)
    assert list(store.iter_layers([])) == []


def test_iter_layers_refuses_a_corrupted_layer_when_reached(tmp_path: Path) -> None:
    store, _ = _store(tmp_path)
    chunk = store.zarr_path / "mlp_gram" / "c" / "2" / "0" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[8] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    layers = store.iter_layers(range(4))
    assert [next(layers)[0], next(layers)[0]] == [0, 1]  # layer 2 is read ahead, its error raised only here
    with pytest.raises(ArtifactError, match="mlp_gram layer 2 does not match its checksum"):
        next(layers)


def test_unfinished_layer_is_refused(tmp_path: Path) -> None:
    store = CorrelationStore(tmp_path / "store")
    store.create_arrays(2, SHAPES)
    with pytest.raises(ArtifactError, match="layer 1 .* was never completed"):
        next(store.iter_layers([1]))


def test_layer_writer_writes_in_order_and_reraises_a_failed_write(tmp_path: Path, monkeypatch) -> None:
    store = CorrelationStore(tmp_path / "store")
    store.create_arrays(3, SHAPES)
    sums = [{n: torch.full(s, float(i), dtype=torch.float64) for n, s in SHAPES.items()} for i in range(3)]
    original = CorrelationStore.write_layer

    def failing(self, layer, *args, **kwargs):
        if layer == 1:
            raise OSError(28, "No space left on device")
        return original(self, layer, *args, **kwargs)

    monkeypatch.setattr(CorrelationStore, "write_layer", failing)
    with pytest.raises(OSError, match="No space left"), LayerWriter(store, "job") as writer:
        writer.submit(0, sums[0], 0.0)
        writer.submit(1, sums[1], 0.0)
        writer.submit(2, sums[2], 0.0)  # raises here: layer 1's write failed, so layer 2 is never written
    assert store.completed_layers("job") == [0]
    monkeypatch.setattr(CorrelationStore, "write_layer", original)
    with LayerWriter(store, "job") as writer:
        for i in (1, 2):
            writer.submit(i, sums[i], 0.0)
    assert store.completed_layers("job") == [0, 1, 2]
    assert [float(store.read_layer(i)["tokens"]) for i in range(3)] == [0.0, 1.0, 2.0]


def test_a_resumed_capture_removes_chunk_temp_files_a_kill_left(tmp_path: Path) -> None:
    """zarr writes each chunk to a *.partial file and renames it: a SIGKILL in between leaves the temp file
    (found by the soak, tests/stages/test_soak.py); the next capture of the store deletes it, and no finished chunk."""
    store, written = _store(tmp_path)
    chunk = next(p for p in store.zarr_path.rglob("*") if p.is_file() and "/c/" in p.as_posix())
    stale = chunk.with_name(chunk.name + ".0f1e2d3c4b5a69788796a5b4c3d2e1f0.partial")
    stale.write_bytes(b"torn")
    store.create_arrays(4, SHAPES)
    assert not stale.exists() and chunk.exists()
    assert torch.equal(store.read_layer(1)["attn_gram"], written[1]["attn_gram"])
