"""What a solve reads, as keys: the solve's own, and those of the error curves and KL-probe sensitivities it uses.

One place derives all three from the compression schema's fields and the code versions below, so an artifact's
name and manifest change whenever anything that produced it changes (a new schema field included, with no list to
update), and the stage's caches of curves and sensitivities are keyed by the same functions. Plain data only (no
torch): ``pipeline.artifacts`` names directories from it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from omegaconf import OmegaConf

CURVES_VERSION = 1  # bump when the module error curves change what they compute
# bump when the per-layer widths a plan gives change (2: rule allocations on a width grid meet the budget)
PLAN_VERSION = 2
# 4: the probe's tr F by one backward pass with labels sampled from the model (pipeline.methods.modegpt.probe),
# in place of a noisy forward pass per module; labels drawn per calibration sequence, so batching changes nothing
PROBE_VERSION = 4
# calibration sequences probed (the first ones; fewer where the calibration has fewer). 8 gives SmolLM2's
# sensitivities within a near-uniform factor of 32's, the same plans, at a quarter of the cost (benchmarks/RESULTS.md,
# "A quarter of the probe")
PROBE_SEQUENCES = 8
PROBE_POSITIONS = 512  # positions probed per sequence (the first ones)
PROBE_SEED = 0
PROBED_SCALES = ("kl",)  # compression.curve_scale values measured by the KL probe
# 2: the sequential capture forms its Gram products at calibration.product_precision, as the store's capture does
# (1: always FP64); part of a sequential solve's key only
SEQUENTIAL_VERSION = 2
# 1: held-out windows are the calibration permutation's next ones; mean KL(dense ‖ candidate) per token
VALIDATION_VERSION = 1
# Compression fields that name a sweep, not a solve: the solve takes the resolved rate instead
SWEEP_FIELDS = ("rate", "rates")
# Compression fields only allocation=validated reads: part of a solve's key, not of the curves and probe it reads
VALIDATION_FIELDS = ("candidates", "validation_sequences")
RULES = ("bi", "uniform")  # candidates of allocation=validated that are allocations of their own (no curves)
# Compression fields retired with one value left (pipeline.config.RETIRED), at that value: the keys keep them, so
# what was solved before they went keeps its name and manifest (the code left computes what that value did)
RETIRED_FIELDS: dict[str, Any] = {"mlp_selection": "leverage", "sequential_target": "layer", "fisher_mix": 0.0}


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def compression_fields(compression: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Every field of the compression schema but the sweep's (and ``skip``), as plain values, and the retired ones
    at the value that stayed (``RETIRED_FIELDS``)."""
    from pipeline.config import compression_schema

    return RETIRED_FIELDS | {f.name: _plain(compression[f.name]) for f in dataclasses.fields(compression_schema())
                             if f.name not in SWEEP_FIELDS + skip}


def candidate(compression: Any, name: str) -> Any:
    """``compression`` as allocation=validated's candidate ``name`` plans it: a rule (bi, uniform) or error curves in
    the units of the curve_scale ``name`` (a copy; every other field as given)."""
    view = OmegaConf.create(_plain(compression))
    if name in RULES:
        view.allocation = name
    else:
        view.allocation, view.curve_scale = "error", name
    return view


def probe_key(compression: Any) -> dict[str, Any] | None:
    """The KL probe's key (None when the solve runs no probe). The probe depends on the tokens and model only (the
    store, which callers add), so every solver setting shares it."""
    k = compression
    if k.allocation != "error" or k.curve_scale not in PROBED_SCALES:
        return None
    key: dict[str, Any] = {"curve_scale": k.curve_scale, "version": PROBE_VERSION, "sequences": PROBE_SEQUENCES,
                           "positions": PROBE_POSITIONS, "seed": PROBE_SEED}
    return key


def curves_key(compression: Any) -> dict[str, Any] | None:
    """The module error curves' key (None when the allocation reads none): every compression field (so no setting
    the curves read can be left out), the curves' code version and the probe they are scaled by."""
    if compression.allocation != "error":
        return None
    return {"version": CURVES_VERSION, "compression": compression_fields(compression, VALIDATION_FIELDS),
            "probe": probe_key(compression)}


def plan_key(compression: Any) -> dict[str, Any] | None:
    """What a solve's plan reads besides the store and the compression fields: its curves, or under
    allocation=validated every candidate's curves and the validation's own version."""
    if compression.allocation != "validated":
        return curves_key(compression)
    return {"validation": VALIDATION_VERSION,
            "candidates": {name: curves_key(candidate(compression, name)) for name in compression.candidates}}


def solve_key(compression: Any, rate: float | None = None) -> dict[str, Any]:
    """A solve's identity besides its store: every compression field, the rate (when given), and the code
    versions and settings of the curves and probe behind its plan."""
    key = compression_fields(compression) | {"curves": plan_key(compression), "plan": PLAN_VERSION}
    if compression.sequential:
        key["sequential_version"] = SEQUENTIAL_VERSION
    return key if rate is None else key | {"rate": float(rate)}
