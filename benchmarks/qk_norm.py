"""Why Qwen3's q/k stay whole: the error of cutting q/k heads under a per-head RMSNorm, on the tiny Qwen3 model.

Type-II keeps the q/k columns with the largest score energy and is judged by how well the kept columns
reproduce the scores q·k. With a per-head norm, a cut head can no longer be normalised by the RMS of the
whole head: the compressed model would normalise by the RMS of the kept columns. This prints, per layer and
kept fraction, the relative error of the attention logits (pre-RoPE, all head pairs of a KV group) for
  (a) the kept columns of the fully normalised q/k: Type-II's own approximation (not computable after a cut);
  (b) the kept columns normalised by their own RMS: what a cut Qwen3 attention computes.

    .venv/bin/python benchmarks/qk_norm.py
"""

from __future__ import annotations

import argparse

import torch

from pipeline.adapters import adapter_for
from pipeline.modegpt import cr_select
from pipeline.tiny import random_model, tiny_config


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps) * weight


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--keep", type=float, nargs="+", default=[0.75, 0.5])
    args = parser.parse_args()
    model = random_model(tiny_config("qwen3"), seed=0)
    adapter = adapter_for(model)
    heads = adapter.head_layout()
    eps = model.config.rms_norm_eps
    ids = torch.randint(0, 256, (1, args.tokens), generator=torch.Generator().manual_seed(0))
    inputs: dict[int, torch.Tensor] = {}
    hooks = [layer.attention_input.register_forward_pre_hook(
        lambda m, a, i=layer.index: inputs.__setitem__(i, a[0][0].double())) for layer in adapter.layers()]
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    print("| layer | kept q/k | (a) Type-II, full-head norm | (b) cut head, norm of kept columns |")
    print("|---|---|---|---|")
    for layer in adapter.layers():
        x = inputs[layer.index]
        with torch.no_grad():
            q = (x @ layer.q_proj.weight.double().T).view(-1, heads.num_heads, heads.head_dim)
            k = (x @ layer.k_proj.weight.double().T).view(-1, heads.num_kv_heads, heads.head_dim)
            gq, gk = layer.q_norm.weight.double(), layer.k_norm.weight.double()
            qn, kn = rms_norm(q, gq, eps), rms_norm(k, gk, eps)
            group = heads.group_size
            kn_rep = kn.repeat_interleave(group, dim=1)
            dense = torch.einsum("thd,shd->hts", qn, kn_rep)
            for keep in args.keep:
                n_keep = int(round(keep * heads.head_dim / 2)) * 2
                index = cr_select(qn.square().sum(0), kn.square().sum(0), n_keep, rope=True)  # [n_kv, keep]
                rows = index.repeat_interleave(group, dim=0)  # per query head
                qa = torch.gather(qn, 2, rows.expand(qn.shape[0], -1, -1))
                ka = torch.gather(kn_rep, 2, rows.expand(kn.shape[0], -1, -1))
                qc, kc = torch.gather(q, 2, rows.expand(q.shape[0], -1, -1)), torch.gather(
                    k.repeat_interleave(group, dim=1), 2, rows.expand(k.shape[0], -1, -1))
                qb, kb = rms_norm(qc, gq[rows], eps), rms_norm(kc, gk[rows], eps)
                err_a = (torch.einsum("thd,shd->hts", qa, ka) - dense).norm() / dense.norm()
                err_b = (torch.einsum("thd,shd->hts", qb, kb) - dense).norm() / dense.norm()
                print(f"| {layer.index} | {n_keep}/{heads.head_dim} | {err_a:.3f} | {err_b:.3f} |")


if __name__ == "__main__":
    main()
