"""The correlation store: one Zarr v3 group per (model, calibration), one array per statistic.

Layout: each array has a leading layer axis and one chunk per layer (square tiles above ``TILE`` for
very wide matrices), no compressor (FP64 Gram matrices do not compress) and fill value NaN, so a chunk
never written reads as NaN rather than as plausible zeros. A layer counts as captured only once its
completion record ``layers/NNNNN.json`` (checksums of every array slice) is written, after the chunks;
zarr >= 3.1.3 writes each chunk via temp file + rename, so a kill at any moment leaves either a whole
chunk or none.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.artifacts import ArtifactError, atomic_write_json, read_json

TILE = 8192  # matrices wider than this are stored as TILE_SMALL x TILE_SMALL tiles
TILE_SMALL = 4096
RECORDS = "layers"


def _digest(a: np.ndarray) -> str:
    # Hash the buffer in place: a copy would be one more 6 GiB array per 70B layer while reads overlap solves.
    return hashlib.sha256(memoryview(np.ascontiguousarray(a)).cast("B")).hexdigest()[:32]


ZARR = "correlations.zarr"


class CorrelationStore:
    """The artifact directory holds ``manifest.json``, the Zarr group and the per-layer ``layers/`` records."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.zarr_path = self.path / ZARR

    # --- creation -----------------------------------------------------------------------------------
    def create_arrays(self, num_layers: int, shapes: Mapping[str, tuple[int, ...]]) -> None:
        """Create the arrays if absent (idempotent, so a resumed capture reuses them).

        Also removes the ``*.partial`` temp files of chunk writes that a killed capture left: zarr writes each
        chunk to one and renames it, so a leftover one is garbage (the capture lock rules out a live writer).
        """
        import zarr

        for stale in self.zarr_path.rglob("*.partial") if self.zarr_path.is_dir() else ():
            stale.unlink(missing_ok=True)

        group = zarr.open_group(str(self.zarr_path), mode="a", zarr_format=3)
        existing = set(group.array_keys())
        for name, shape in shapes.items():
            full = (num_layers, *shape)
            if name in existing:
                if tuple(group[name].shape) != full:
                    raise ArtifactError(f"{self.zarr_path}/{name} has shape {group[name].shape}, expected {full}")
                continue
            chunk = tuple(TILE_SMALL if s > TILE else s for s in shape)
            group.create_array(
                name, shape=full, chunks=(1, *chunk), dtype="float64", fill_value=np.nan, compressors=None
            )
        (self.path / RECORDS).mkdir(parents=True, exist_ok=True)

    # --- layers -------------------------------------------------------------------------------------
    def _record_path(self, layer: int) -> Path:
        return self.path / RECORDS / f"{layer:05d}.json"

    def write_layer(self, layer: int, stats: Mapping[str, torch.Tensor], fingerprint: str, seconds: float) -> None:
        import zarr

        group = zarr.open_group(str(self.zarr_path), mode="r+", zarr_format=3)
        checksums = {}
        for name, tensor in stats.items():
            a = tensor.detach().to("cpu", torch.float64).numpy()
            group[name][layer] = a
            checksums[name] = _digest(a)
        record = {"layer": layer, "fingerprint": fingerprint, "checksums": checksums, "seconds": seconds,
                  "tokens": int(stats["tokens"].item()), "written": time.time()}
        atomic_write_json(self._record_path(layer), record)  # last: the layer is done only now

    def completed_layers(self, fingerprint: str) -> list[int]:
        """Layers whose completion record exists and belongs to this capture job."""
        done = []
        records = self.path / RECORDS
        if not records.is_dir():
            return done
        for p in sorted(records.glob("*.json")):
            rec = read_json(p)
            if rec.get("fingerprint") != fingerprint:
                raise ArtifactError(f"{p} was written by another capture job (fingerprint {rec.get('fingerprint')} "
                                    f"!= {fingerprint}): remove {self.path} or rerun with overwrite=[capture]")
            done.append(int(rec["layer"]))
        return done

    def read_layer(self, layer: int, verify: bool = True, names: tuple[str, ...] | None = None
                   ) -> dict[str, torch.Tensor]:
        """One layer's sums; with ``verify``, a chunk that does not match its recorded checksum is refused."""
        import zarr

        record_path = self._record_path(layer)
        if not record_path.exists():
            raise ArtifactError(f"layer {layer} of {self.path} was never completed: rerun `modegpt capture`")
        record = read_json(record_path)
        group = zarr.open_group(str(self.zarr_path), mode="r", zarr_format=3)
        out = {}
        for name, digest in record["checksums"].items():
            if names is not None and name not in names:
                continue
            try:
                a = np.asarray(group[name][layer])
            except Exception as e:  # a truncated chunk fails to decode
                raise ArtifactError(f"{self.zarr_path}/{name} layer {layer} is unreadable ({e}): the chunk is "
                                    "corrupted; rerun `modegpt capture overwrite=[capture]`") from e
            if verify and _digest(a) != digest:
                raise ArtifactError(f"{self.zarr_path}/{name} layer {layer} does not match its checksum: the chunk is "
                                    "corrupted; rerun `modegpt capture overwrite=[capture]`")
            out[name] = torch.from_numpy(a)
        return out

    def iter_layers(self, layers: Iterable[int], verify: bool = True, names: tuple[str, ...] | None = None
                    ) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
        """(layer, sums) in order, the next layer read in a background thread while the caller works on this one.

        Zarr decoding, checksums and file reads release the GIL, so a solve overlaps them with its own work;
        at most two layers' sums are in memory at once. ``names`` limits what is read, as in :meth:`read_layer`.
        """
        order = list(layers)
        if not order:
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-read") as pool:
            pending = pool.submit(self.read_layer, order[0], verify, names)
            for position, layer in enumerate(order):
                sums = pending.result()
                if position + 1 < len(order):
                    pending = pool.submit(self.read_layer, order[position + 1], verify, names)
                yield layer, sums

    def nbytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())


class LayerWriter:
    """Writes finished layers to a store in a background thread while the capture computes the next one.

    Writes run one at a time, in order. ``submit`` first waits for the previous write and re-raises its error
    (a full disk stops the capture at the next layer), so host memory holds at most one layer in flight.
    A layer is complete only once its record is written, so a kill mid-write costs just that layer.
    """

    def __init__(self, store: CorrelationStore, fingerprint: str) -> None:
        self._store = store
        self._fingerprint = fingerprint
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-write")
        self._pending: Future[None] | None = None

    def submit(self, layer: int, stats: Mapping[str, torch.Tensor], seconds: float) -> None:
        self.wait()
        host = {name: t.detach().to("cpu", torch.float64) for name, t in stats.items()}  # frees the device copy
        self._pending = self._pool.submit(self._store.write_layer, layer, host, self._fingerprint, seconds)

    def wait(self) -> None:
        """Block until the last submitted layer is on disk; re-raise its error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def __enter__(self) -> LayerWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.wait()  # even when the capture failed: a layer already computed is worth keeping
        finally:
            self._pool.shutdown()
