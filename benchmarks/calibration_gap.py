"""How far a Type-I fit carries from its calibration to the evaluated text: each layer's MLP output error on a
second store's correlations (the text the model is scored on), for the same kept widths fitted on each calibration.

    .venv/bin/python benchmarks/calibration_gap.py --rate 0.25 \
        --fit "" --fit "calibration=paper" --fit "$TAIL" --on "$TAIL"
    # TAIL="calibration.source=wikitext2 calibration.name=wikitext-test-tail
    #       calibration.path=outputs/benchmarks/wikitext-test-tail.raw"   (benchmarks/wikitext_tail.py writes it)

The widths are the default solve's at ``--rate`` on the first ``--fit`` calibration (its plan.json; the solve
runs if missing). For each fit: the kept columns J and the refit down projection W_D' from that store (the
solver's own ``nystrom_mlp`` with the run's settings), then the relative output error
tr(Eᵀ C E) / tr(W_Dᵀ C W_D), E = W_D − P_J W_D', with C the MLP correlation of the ``--on`` store. A fit on
the ``--on`` store itself is the in-sample floor; the ratio of another fit's error to it is what its statistics
lose on this text. Every store must exist (``modegpt capture`` with the same overrides).
"""

from __future__ import annotations

import argparse
import shlex

import torch

from pipeline.adapters import adapter_for
from pipeline.artifacts import PLAN, ArtifactPaths, read_json
from pipeline.config import compose_config, validate
from pipeline.dense import load_model, resolve_device
from pipeline.methods.modegpt.layer import DenseLayer, mlp_quadratic_error
from pipeline.modegpt import nystrom_mlp
from pipeline.readers import open_store
from stages import solve


def relative_error(corr: torch.Tensor, w_down: torch.Tensor, index: torch.Tensor, new_down: torch.Tensor) -> float:
    """The solver's Type-I error tr(EᵀCE) over the output energy tr(W_DᵀCW_D), with C from another store."""
    corr_down = corr @ w_down
    return float(mlp_quadratic_error(corr, w_down, corr_down, index, new_down) / (w_down * corr_down).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=0.25)
    parser.add_argument("--fit", action="append", required=True,
                        help="Hydra overrides of one calibration to fit on (quoted; \"\" is the default)")
    parser.add_argument("--on", required=True, help="Hydra overrides of the calibration to measure the error on")
    parser.add_argument("--layers", type=int, nargs="*", help="only these layers (default: all)")
    args = parser.parse_args()

    def config(overrides: str):
        cfg = compose_config([*shlex.split(overrides), f"compression.rate={args.rate}"])
        validate(cfg)
        return cfg

    fits = [config(o) for o in args.fit]
    on = config(args.on)
    plan = read_json(solve.run(fits[0]) / PLAN)
    widths = [layer["mlp_width"] for layer in plan["layers"]]
    device = resolve_device(on.device)
    model = load_model(on, ArtifactPaths(on).dense_model)
    adapter = adapter_for(model, on.model.family)
    heads = adapter.head_layout()
    k = on.compression
    stores = [open_store(c)[0] for c in fits]
    on_store = open_store(on)[0]
    names = [ArtifactPaths(c).calibration_key for c in fits]
    on_name = ArtifactPaths(on).calibration_key
    print(f"Type-I relative output error on {on_name} at rate {args.rate} (widths of the default solve on {names[0]});"
          f" columns: fitted on {', '.join(names)}")
    totals = [0.0] * len(fits)
    layers = args.layers if args.layers else range(adapter.num_layers)
    for index in layers:
        dense = DenseLayer.from_layer(adapter.layer(index), heads, device)
        eval_sums = on_store.read_layer(index, names=("mlp_gram", "tokens"))
        eval_corr = eval_sums["mlp_gram"].to(device, torch.float64) / float(eval_sums["tokens"])
        row = []
        for store in stores:
            sums = store.read_layer(index, names=("mlp_gram", "tokens"))
            corr = sums["mlp_gram"].to(device, torch.float64) / float(sums["tokens"])
            mlp = nystrom_mlp(corr, dense.down, widths[index], k.ridge_lambda, k.nystrom_ridge,
                              corr_w=corr @ dense.down, refit=k.mlp_refit,
                              tokens=float(sums["tokens"]))
            row.append(relative_error(eval_corr, dense.down, mlp.index, mlp.w_down))
        totals = [t + e for t, e in zip(totals, row, strict=True)]
        print(f"layer {index:3d} width {widths[index]:5d}: " + "  ".join(f"{e:.4f}" for e in row), flush=True)
    mean = [t / len(layers) for t in totals]
    print("mean over layers: " + "  ".join(f"{name} {m:.4f}" for name, m in zip(names, mean, strict=True)))


if __name__ == "__main__":
    main()
