"""Stage `capture`: FP64 activation statistics of the dense model into a Zarr store, resumable per layer.

Data-parallel with ``torchrun --nproc-per-node N -m stages.cli capture``: each rank takes a shard of the
calibration samples, sums are all-reduced, rank 0 writes.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from filelock import FileLock, Timeout

from pipeline.adapters import adapter_for
from pipeline.artifacts import (
    COMPLETE,
    ArtifactError,
    ArtifactPaths,
    Manifest,
    artifact_state,
    expected_store,
    overwrites,
    prepare_output,
    write_manifest,
)
from pipeline.capture import CorrelationStore, LayerWriter, stat_shapes
from pipeline.capture.runner import capture_layers
from pipeline.dense import load_model, peak_device_memory, resolve_device
from pipeline.inputs import check_model_source
from pipeline.readers import load_tokens

log = logging.getLogger(__name__)


def _rank_world() -> tuple[int, int]:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            # Collectives stage their buffers on the current device: each rank must own its GPU first.
            local = int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()
            torch.cuda.set_device(local)
            dist.init_process_group(backend="nccl", device_id=torch.device("cuda", local))
        else:
            dist.init_process_group(backend="gloo")
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def _device(cfg: Any, world: int) -> torch.device:
    device = resolve_device(cfg.device)
    if device.type == "cuda" and world > 1 and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # set per rank in _rank_world
    return device


def run(cfg: Any) -> Path:
    check_model_source(cfg, hub=False)
    paths = ArtifactPaths(cfg)
    rank, world = _rank_world()
    input_ids, tokens_manifest = load_tokens(cfg)
    expected = expected_store(cfg, tokens_manifest.fingerprint)
    store = CorrelationStore(paths.store)
    lock = FileLock(str(paths.store) + ".lock")
    try:
        # Rank 0 decides; the others learn the decision (or the error) instead of waiting on a collective.
        decision: tuple[str, str] = ("ok", "")
        if rank == 0:
            try:
                decision = ("ok", _start(cfg, paths, expected, lock))
            except ArtifactError as e:
                decision = ("error", str(e))
        if world > 1:
            box = [decision]
            dist.broadcast_object_list(box, src=0)
            decision = box[0]
        if decision[0] == "error":
            raise ArtifactError(decision[1])
        if decision[1] == "skip":
            log.info("reusing correlation store %s (complete, fingerprint %s)", paths.store, expected.fingerprint)
            return paths.store
        _capture(cfg, paths, store, expected, input_ids, rank, world)
        return paths.store
    finally:
        if rank == 0 and lock.is_locked:
            lock.release()
        if world > 1:
            dist.destroy_process_group()


def _start(cfg: Any, paths: ArtifactPaths, expected: Manifest, lock: FileLock) -> str:
    """'skip' for a complete, current store (no lock needed: concurrent jobs may share it), else lock it."""
    if not overwrites(cfg.overwrite, expected.stage) and artifact_state(paths.store, expected) == "complete":
        return "skip"
    paths.store.parent.mkdir(parents=True, exist_ok=True)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ArtifactError(f"another capture is writing {paths.store} (lock {lock.lock_file} is held)") from None
    return prepare_output(paths.store, expected, cfg.overwrite)


def _capture(cfg: Any, paths: ArtifactPaths, store: CorrelationStore, expected: Manifest,
             input_ids: torch.Tensor, rank: int, world: int) -> None:
    model = load_model(cfg, paths.dense_model)
    adapter = adapter_for(model, cfg.model.family)
    shape = adapter.block_shape()
    num_layers = adapter.num_layers
    fp = expected.fingerprint
    if rank == 0:
        paths.store.mkdir(parents=True, exist_ok=True)
        write_manifest(paths.store, expected)  # status partial until every layer is recorded
        store.create_arrays(num_layers, stat_shapes(shape.hidden_size, shape.intermediate_size, adapter.head_layout()))
    _barrier(world)
    done = set(store.completed_layers(fp))
    start = next((i for i in range(num_layers) if i not in done), num_layers)
    if start:
        log.info("resuming capture at layer %d/%d (%d layers already in %s)", start, num_layers, len(done), paths.store)
    t0 = time.perf_counter()
    if start < num_layers:
        shard = input_ids[rank::world]
        # Layer i is written in the background while layer i + 1 is captured (rank 0 writes).
        with LayerWriter(store, fp) as writer:

            def sink(layer: int, stats: dict[str, torch.Tensor], seconds: float) -> None:
                if rank == 0:
                    writer.submit(layer, stats, seconds)
                _barrier(world)

            capture_layers(adapter, shard, sink, _device(cfg, world), cfg.calibration.batch_size, start,
                           precision=cfg.calibration.product_precision)
    if rank == 0:
        expected.status = COMPLETE
        expected.extra = {"tokens": int(input_ids.numel()), "layers": num_layers, "world_size": world,
                          "seconds": round(time.perf_counter() - t0, 3), "bytes": store.nbytes(),
                          "peak_device_bytes": peak_device_memory(_device(cfg, world))}
        write_manifest(paths.store, expected)
        log.info("correlation store complete: %s (%.1f MiB)", paths.store, expected.extra["bytes"] / 2**20)
    _barrier(world)
