"""allocation=validated: every candidate plan solved and applied in memory, scored by the KL of its compressed model
to the dense one on held-out sequences; the winner's solved layers become the solve's. Under sequential calibration
the winner's plan is solved again on the compressed layers below, and that solve is scored the same way against the
winner's store solve: the lower KL is kept."""

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
from pipeline.artifacts import (
    CANDIDATES_DIR,
    FROM_STORE_DIR,
    PLAN,
    ArtifactError,
    atomic_path,
    atomic_write_json,
    layer_file,
)
from pipeline.capture.heldout_scores import heldout_scores
from pipeline.methods import Method
from pipeline.plan import LayerPlan
from pipeline.planning import removed_share
from pipeline.readers import heldout_tokens, layer_errors
from pipeline.solve_identity import candidate
from pipeline.solving import layers
from pipeline.solving.sequential import solve_sequentially

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
    # under compression.sequential the candidates, solved from the dense store, choose the plan: its layers are solved
    # again on the compressed layers below them, and the winner's store solve is kept until that solve is scored
    # against it (keep_store_solve_or_sequential)
    for index, path in files[chosen].items():
        with atomic_path(layer_file(target / FROM_STORE_DIR if k.sequential else target, index)) as tmp:
            shutil.copyfile(path, tmp)  # a plan two candidates share has one file: copy
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


def solve_sequentially_checked(cfg: Any, method: Method, adapter: ModelAdapter, plans: list[LayerPlan], settings: Any,
                               device: torch.device, target: Path, errors: dict[int, Any], plan_doc: dict[str, Any]
                               ) -> None:
    """Sequential calibration validated like the plan: the pass also carries the held-out windows, and the sequential
    solve is kept only if its KL to the dense model there is no higher than the same plan's solve from the store (the
    validation's winner, kept aside until now). The comparison is logged and recorded in plan.json (``validation``
    ``sequential``) before it is applied, so an interrupted solve finishes it on resume without scoring again."""
    validation, chosen = plan_doc["validation"], plan_doc["chosen"]
    num_layers = adapter.num_layers
    store_solve = [layer_file(target / FROM_STORE_DIR, i) for i in range(num_layers)]
    if "sequential" not in validation:
        missing = [i for i, path in enumerate(store_solve) if not path.exists()]
        if missing:
            raise ArtifactError(f"{target / FROM_STORE_DIR} lacks layers {missing} of the store solve the sequential "
                                "solve is checked against: rerun with overwrite=[solve]")
        heldout = heldout_tokens(cfg, cfg.compression.validation_sequences)
        scores = solve_sequentially(cfg, method, adapter, plans, settings, device, target, errors, heldout)
        assert scores is not None
        (kl,), (nll,) = scores.kl.values(), scores.nll.values()
        store_kl = validation["kl_to_dense"][chosen]
        validation["sequential"] = {"kl_to_dense": kl, "perplexity": math.exp(nll), "kept": kl <= store_kl,
                                    "seconds": round(scores.seconds, 3)}
        log.info("sequential calibration on the held-out sequences (%.1f s in the pass): KL %.5f, perplexity %.3f, "
                 "against KL %.5f for the plan (%s) solved from the store: %s kept", scores.seconds, kl,
                 math.exp(nll), store_kl, chosen, "the sequential solve" if kl <= store_kl else "the store's solve")
        atomic_write_json(target / PLAN, plan_doc)
    elif validation["sequential"]["kept"]:  # checked before: only layers lost since are solved again
        solve_sequentially(cfg, method, adapter, plans, settings, device, target, errors)
    # the store solve's directory goes only once its layers are copied: one partly gone was being removed
    if not validation["sequential"]["kept"]:
        if all(path.exists() for path in store_solve):
            for index, path in enumerate(store_solve):
                with atomic_path(layer_file(target, index)) as tmp:
                    shutil.copyfile(path, tmp)
                errors[index] = layer_errors(layer_file(target, index))
        elif not all(layer_file(target, i).exists() for i in range(num_layers)):
            raise ArtifactError(f"{target} lacks layers of the store solve its held-out check kept: rerun with "
                                "overwrite=[solve]")
    shutil.rmtree(target / FROM_STORE_DIR, ignore_errors=True)
