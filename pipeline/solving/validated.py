"""allocation=validated: every candidate plan solved and applied in memory, scored by the KL of its compressed model
to the dense one on held-out sequences; the winner's solved layers become the solve's."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from pipeline.adapters import ModelAdapter
from pipeline.artifacts import CANDIDATES_DIR, atomic_path, layer_file
from pipeline.capture.heldout_scores import heldout_scores
from pipeline.methods import Method
from pipeline.plan import LayerPlan
from pipeline.planning import removed_share
from pipeline.readers import heldout_tokens
from pipeline.solve_identity import candidate
from pipeline.solving import layers

log = logging.getLogger(__name__)


def candidate_views(k: Any) -> dict[str, Any]:
    """The compression settings each plan is made under: the configured allocation's own, or under
    allocation=validated one per candidate."""
    if k.allocation != "validated":
        return {k.allocation: k}
    return {name: candidate(k, name) for name in k.candidates}


def validate_candidates(cfg: Any, store: Any, adapter: ModelAdapter, method: Method,
                        candidates: dict[str, list[LayerPlan]], settings: Any, device: torch.device, target: Path
                        ) -> tuple[str, dict[str, Any]]:
    """Solve every candidate layer by layer (a plan two candidates share, once), score each
    by the KL of its compressed model to the dense one on held-out sequences, and move the winner's solved layers
    into the solve (so the winner costs no second solve; under sequential calibration the
    winner's plan is solved again, layer on compressed layer). Returns the winner and the table for plan.json."""
    k = cfg.compression
    start = time.perf_counter()
    heldout = heldout_tokens(cfg, k.validation_sequences)
    scratch = target / CANDIDATES_DIR
    shutil.rmtree(scratch, ignore_errors=True)
    files: dict[str, dict[int, Path]] = {name: {} for name in candidates}

    # heldout_scores asks for layers 0, 1, ... in order: the next layer's sums load while this one is solved and scored
    layer_sums = store.iter_layers(range(adapter.num_layers), verify=cfg.verify_store)

    def variants(index: int) -> dict[str, dict[str, torch.Tensor]]:
        read, sums = next(layer_sums)
        assert read == index, f"validation asked for layer {index} after layer {read - 1}"
        solved: dict[str, Path] = {}  # one solve per distinct plan of this layer
        for name, plans in candidates.items():
            plan = json.dumps(plans[index].to_json(), sort_keys=True)
            if plan not in solved:
                layers.solve_layer(method, adapter, index, sums, plans[index], settings, device, scratch / name)
                solved[plan] = layer_file(scratch / name, index)
            files[name][index] = solved[plan]
        loaded = {path: load_file(str(path)) for path in solved.values()}
        return {name: loaded[files[name][index]] for name in candidates}

    def apply(layer: Any, tensors: dict[str, torch.Tensor]) -> None:
        method.apply_in_place(layer, adapter, tensors)

    with contextlib.closing(layer_sums):  # on an error, stop the read-ahead now, not when the traceback goes
        scores = heldout_scores(adapter, heldout, cfg.calibration.batch_size, device, variants, apply)
    kl = scores.kl
    chosen = min(kl, key=kl.__getitem__)
    # under compression.sequential the candidates, solved from the dense store, only choose the plan: its layers are
    # solved again on the compressed layers below them
    for index, path in files[chosen].items() if not k.sequential else ():
        with atomic_path(layer_file(target, index)) as tmp:  # a plan two candidates share has one file: copy
            shutil.copyfile(path, tmp)
    shutil.rmtree(scratch)
    seconds = time.perf_counter() - start
    removed = {name: removed_share(plans, adapter.block_shape()) for name, plans in candidates.items()}
    perplexity = {name: math.exp(nll) for name, nll in scores.nll.items()}
    dense_perplexity = math.exp(scores.dense_nll)
    table = "\n".join(f"  {name:<10} KL {value:.5f}  perplexity {perplexity[name]:.3f}  block params removed "
                      f"{removed[name]:.4f}{'  <- chosen' if name == chosen else ''}"
                      for name, value in sorted(kl.items(), key=lambda item: item[1]))
    log.info("held-out validation (%d sequences x %d tokens, %.1f s): mean KL to the dense model per token, and "
             "perplexity of the held-out text (dense %.3f)\n%s", *heldout.shape, seconds,
             dense_perplexity, table)
    return chosen, {"sequences": int(heldout.shape[0]), "positions": int(heldout.shape[1]),
                    "kl_to_dense": kl, "perplexity": perplexity, "dense_perplexity": dense_perplexity,
                    "block_params_removed": removed, "seconds": round(seconds, 3)}
