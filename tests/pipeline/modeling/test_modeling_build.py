"""Assembly: zero compression reproduces the dense model; shapes, configs and parameter counts of real ones."""

from __future__ import annotations

import pytest
import torch
from modeling_fixtures import MODEL_TYPES, compressed_class, layer_dims, make_dense, random_solutions

from pipeline.adapters import adapter_for
from pipeline.assembly import build_compressed_model, count_parameters, expected_parameter_count, identity_solutions
from pipeline.modeling import ModeGPTLlamaConfig


def _ids(batch: int = 2, length: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 128, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", MODEL_TYPES)
def test_identity_solutions_reproduce_dense_logits(family: str, attn: str) -> None:
    dense = make_dense(family, attn)
    adapter = adapter_for(dense)
    plans, solutions = identity_solutions(adapter)
    model = build_compressed_model(dense, adapter, plans, solutions)
    assert type(model) is compressed_class(family)
    assert model.config._attn_implementation == attn
    ids = _ids()
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding: the mask reaches the attention as a tensor, not is_causal
    with torch.no_grad():
        for kwargs in ({}, {"attention_mask": mask}):
            keep = kwargs.get("attention_mask", mask.new_ones(mask.shape)).bool()
            # Padded positions are left out: their query rows attend to nothing, so the rows do not sum to 1
            # and the folded value bias (OPT, Qwen2) legitimately changes their (unused) outputs.
            got, want = model(ids, **kwargs).logits[keep], dense(ids, **kwargs).logits[keep]
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert count_parameters(dense) == adapter.total_params()
    # Rate 0 changes only biases: v's is folded away, and Qwen2's o gains one.
    assert count_parameters(model) == expected_parameter_count(adapter, plans)
    if not any(adapter.bias_flags().values()):
        assert count_parameters(model) == count_parameters(dense)


def test_qwen2_value_bias_is_folded_into_a_new_output_bias() -> None:
    dense = make_dense("qwen2")
    adapter = adapter_for(dense)
    model = build_compressed_model(dense, adapter, *identity_solutions(adapter))
    attn = model.model.layers[0].self_attn
    assert attn.q_proj.bias is not None and attn.k_proj.bias is not None
    assert attn.v_proj.bias is None and attn.o_proj.bias is not None
    assert dense.model.layers[0].self_attn.o_proj.bias is None
    assert model.config.qk_bias and model.config.o_bias
    assert "sliding_window" not in model.config.to_dict() and "layer_types" not in model.config.to_dict()


@pytest.mark.parametrize("family", MODEL_TYPES)
def test_compressed_shapes_config_and_parameter_count(family: str) -> None:
    dense = make_dense(family)
    adapter = adapter_for(dense)
    plans, solutions = random_solutions(adapter)
    model = build_compressed_model(dense, adapter, plans, solutions)
    layout, d = adapter.head_layout(), adapter.block_shape().hidden_size
    n_h, n_kv, hd = layout.num_heads, layout.num_kv_heads, layout.head_dim
    dims = layer_dims(adapter)
    assert model.config.layer_dims == [{"mlp_width": w, "qk_dim": q, "v_dim": v} for w, q, v in dims]
    bias = adapter.bias_flags()
    n_mlp_in = 2 if adapter.layer(0).gate_proj is not None else 1
    removed = 0
    for (w, q, v), layer in zip(dims, type(adapter)(model).layers(), strict=True):
        assert tuple(layer.q_proj.weight.shape) == (n_h * q, d)
        assert tuple(layer.k_proj.weight.shape) == (n_kv * q, d)
        assert tuple(layer.v_proj.weight.shape) == (n_kv * v, d) and layer.v_proj.bias is None
        assert tuple(layer.o_proj.weight.shape) == (d, n_h * v)
        assert tuple(layer.up_proj.weight.shape) == (w, d) and tuple(layer.down_proj.weight.shape) == (d, w)
        # independent arithmetic: what each linear loses against the dense widths (D = 96)
        removed += (n_mlp_in + 1) * d * (96 - w) + (n_h + n_kv) * d * (hd - q) + (n_kv + n_h) * d * (hd - v)
        removed += n_mlp_in * (96 - w) * bias["mlp_in"] + (n_h + n_kv) * (hd - q) * bias["qk"]
        removed += n_kv * hd * bias["v"]  # v's bias is gone, folded into o's ...
        removed -= d * (bias["v"] and not bias["o"])  # ... which Qwen2's o gains
    assert count_parameters(model) == count_parameters(dense) - removed
    assert count_parameters(model) == expected_parameter_count(adapter, plans)
    if layout.rope:
        for i, sol in enumerate(solutions):
            assert model.config.rope_index[i] == sol.qk_index[:, : sol.qk_index.shape[1] // 2].tolist()
    else:
        assert model.config.rope_index is None
    assert next(model.parameters()).dtype == torch.float32
    with torch.no_grad():
        assert torch.isfinite(model(_ids()).logits).all()


def test_dtype_follows_the_dense_model() -> None:
    dense = make_dense("llama").to(torch.bfloat16)
    adapter = adapter_for(dense)
    model = build_compressed_model(dense, adapter, *random_solutions(adapter))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.config.dtype == torch.bfloat16
    assert model.model.layers[0].self_attn.rope_gather.dtype == torch.long
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied embeddings stay tied


def test_mismatched_plan_and_unfolded_value_bias_are_rejected() -> None:
    dense = make_dense("opt")
    adapter = adapter_for(dense)
    plans, solutions = random_solutions(adapter)
    with pytest.raises(ValueError, match="do not match the plan"):
        build_compressed_model(dense, adapter, plans[::-1], solutions)
    solutions[0].o_bias = None
    with pytest.raises(ValueError, match="value bias"):
        build_compressed_model(dense, adapter, plans, solutions)


def test_config_validation() -> None:
    base = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 1, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 16}
    dims = [{"mlp_width": 8, "qk_dim": 4, "v_dim": 4}]
    with pytest.raises(ValueError, match="rope_index"):
        ModeGPTLlamaConfig(**base, layer_dims=dims)
    with pytest.raises(ValueError, match="rope_index"):
        ModeGPTLlamaConfig(**base, layer_dims=dims, rope_index=[[[0, 9], [1, 2]]])  # 9 >= d_H/2
    config = ModeGPTLlamaConfig(**base, layer_dims=dims, rope_index=[[[0, 7], [1, 2]]])
    assert config.dims(0) == dims[0] and config.kept_frequencies(0) == [[0, 7], [1, 2]]
    assert ModeGPTLlamaConfig(**base).dims(0) == {"mlp_width": 96, "qk_dim": 16, "v_dim": 16}


def test_qwen3_configs_refuse_cut_qk_heads() -> None:
    """The per-head q/k norm needs whole heads: a compressed Qwen3 config with a narrower q/k is refused."""
    from pipeline.modeling.configuration_modegpt import ModeGPTQwen3Config

    base = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 1, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 16}
    with pytest.raises(ValueError, match="every qk_dim must be 16"):
        ModeGPTQwen3Config(**base, layer_dims=[{"mlp_width": 8, "qk_dim": 8, "v_dim": 4}],
                           rope_index=[[[0, 7, 2, 3], [1, 2, 3, 4]]])
    full = ModeGPTQwen3Config(**base, layer_dims=[{"mlp_width": 8, "qk_dim": 16, "v_dim": 4}],
                              rope_index=[[list(range(8)), list(range(8))]])
    assert full.dims(0)["qk_dim"] == 16
