"""Why the module budget moves widths where it does: each module's error per parameter removed, per layer.

    .venv/bin/python benchmarks/module_costs.py                      # default model and calibration
    .venv/bin/python benchmarks/module_costs.py --cut 0.5 -- calibration=paper

From the same curves ``compression.allocation=error`` reads (``module_error_curves`` in
``pipeline/methods/modegpt/curves.py``): for each layer and module, the error when that module alone loses ``--cut``
of its width, as a relative change of the residual stream, divided by the parameters that removes (×1e6). Also
each module's error relative to its own output energy, the quantity the paper's per-module solvers minimise. Needs
a store captured with the inverse residual energies (``modegpt capture``).
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from pipeline.adapters import adapter_for
from pipeline.artifacts import ArtifactPaths
from pipeline.config import compose_config, validate
from pipeline.dense import load_model, resolve_device
from pipeline.methods.modegpt import ModeGPT, ModegptSettings
from pipeline.planning import MODULE_ORDER
from pipeline.readers import open_store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cut", type=float, default=0.25, help="fraction of each module's width removed")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = compose_config(args.overrides)
    validate(cfg)
    k, device = cfg.compression, resolve_device(cfg.device)
    store, _ = open_store(cfg)
    adapter = adapter_for(load_model(cfg, ArtifactPaths(cfg).dense_model), cfg.model.family)
    # the residual-stream unit: the KL probe's unit (the default budget's) needs the probe, which this table skips
    settings = dataclasses.replace(ModegptSettings.from_config(k), curve_scale="residual")
    method = ModeGPT()
    print(f"{cfg.model.name}: error per parameter removed (x1e6, relative residual-stream change) when one module "
          f"loses {args.cut:.0%} of its width")
    print("| layer | " + " | ".join(MODULE_ORDER) + " | cheapest |")
    print("|---|" + "---|" * (len(MODULE_ORDER) + 1))
    totals = dict.fromkeys(MODULE_ORDER, 0.0)
    for index, sums in store.iter_layers(range(adapter.num_layers), verify=False):
        curves = method.module_curves(adapter.layer(index), adapter, sums, settings, k.max_sparsity, device)
        per_param = {}
        for name in MODULE_ORDER:
            c = curves[name]
            widths = torch.arange(c.full + 1)
            target = round((1 - args.cut) * c.full)
            allowed = torch.isfinite(c.error) & (widths <= target)
            kept = int(widths[allowed].max()) if bool(allowed.any()) else c.full
            removed = (c.full - kept) * c.unit_params
            per_param[name] = float(c.error[kept]) / removed * 1e6 if removed else float("nan")
            totals[name] += per_param[name]
        cheapest = min(per_param, key=per_param.get)
        print(f"| {index} | " + " | ".join(f"{per_param[n]:.3g}" for n in MODULE_ORDER) + f" | {cheapest} |")
    print("| mean | " + " | ".join(f"{totals[n] / adapter.num_layers:.3g}" for n in MODULE_ORDER) + " | |")


if __name__ == "__main__":
    main()
