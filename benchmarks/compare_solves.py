"""How far apart two results of the pipeline are, read from their cached artifacts (nothing is recomputed).

    # two solves: their plans, and the largest relative Frobenius difference of any solved tensor
    .venv/bin/python benchmarks/compare_solves.py solves compression.allocation=error \
        compression.curve_scale=residual --a calibration.product_precision=fp64 --b calibration.product_precision=fp32
    # two KL-probe results of one store, probed over different numbers of calibration sequences
    .venv/bin/python benchmarks/compare_solves.py probe --sequences 8 32

Each side is the run's config (the overrides after the subcommand) plus its own overrides; the artifacts must exist
(made by the stages or by ``benchmarks/quality.py``: ``--probe-sequences N`` there makes a probe over N sequences).
"""

from __future__ import annotations

import argparse
import json

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from pipeline import solve_identity
from pipeline.artifacts import PLAN, SOLVE, ArtifactPaths, fingerprint, layer_file, require_complete
from pipeline.config import compose_config, validate
from pipeline.readers import open_store


def compare_solves(base: list[str], a: list[str], b: list[str]) -> None:
    dirs = []
    for side in (a, b):
        cfg = compose_config([*base, *side])
        validate(cfg)
        target = ArtifactPaths(cfg).solve()
        require_complete(target, SOLVE, "solve artifact")
        dirs.append(target)
    plans = [json.loads((d / PLAN).read_text())["layers"] for d in dirs]
    print(f"a: {dirs[0]}\nb: {dirs[1]}\nsame plan: {plans[0] == plans[1]}")
    worst, where = 0.0, ""
    for index in range(len(plans[0])):
        x, y = (load_file(str(layer_file(d, index))) for d in dirs)
        for name, tensor in x.items():
            if tensor.is_floating_point() and tensor.shape == y[name].shape:
                diff = float((tensor.double() - y[name].double()).norm() / tensor.double().norm().clamp_min(1e-30))
                if diff > worst:
                    worst, where = diff, f"layer {index} {name}"
    print(f"largest relative Frobenius difference of a solved tensor: {worst:.3g} ({where})")


def compare_probes(base: list[str], sequences: list[int]) -> None:
    cfg = compose_config([*base, "compression.allocation=error", "compression.curve_scale=kl"])
    _, manifest = open_store(cfg)
    found = []
    for count in sequences:
        key = {"store": manifest.fingerprint, **(solve_identity.probe_key(cfg.compression) or {}), "sequences": count}
        path = ArtifactPaths(cfg).output_sensitivity(fingerprint(key))
        if not path.exists():
            raise SystemExit(f"no probe over {count} sequences for this store ({path}): run benchmarks/quality.py "
                             f"--probe-sequences {count} --methods kl-scale first")
        with safe_open(str(path), "pt") as handle:
            found.append(handle.get_tensor("sensitivity").double())
    ratio = found[0] / found[1]
    print(f"sensitivities over {sequences[0]} sequences / over {sequences[1]} ({ratio.shape[0]} layers):")
    for column, module in enumerate(("attention output", "MLP output")):
        logs = torch.stack([found[0][:, column].log(), found[1][:, column].log()])
        print(f"  {module}: ratio {ratio[:, column].min():.3f}..{ratio[:, column].max():.3f}, "
              f"log correlation {torch.corrcoef(logs)[0, 1]:.5f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("solves", "probe"))
    parser.add_argument("--a", nargs="*", default=[], help="overrides of the first solve")
    parser.add_argument("--b", nargs="*", default=[], help="overrides of the second solve")
    parser.add_argument("--sequences", type=int, nargs=2, default=[8, 32], help="probe: the two sequence counts")
    parser.add_argument("overrides", nargs="*", help="overrides of both sides")
    args = parser.parse_args()
    if args.what == "solves":
        compare_solves(args.overrides, args.a, args.b)
    else:
        compare_probes(args.overrides, args.sequences)


if __name__ == "__main__":
    main()
