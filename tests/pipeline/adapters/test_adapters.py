"""Adapters: block-by-block forward, layouts and parameter counts for every registered model type, and the
registry itself (one place per family: every list derived from it agrees, unclaimed model types are refused)."""

from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoConfig

from pipeline.adapters import (
    ADAPTERS,
    UnsupportedModelError,
    adapter_for,
    families,
    family_of,
    output_source,
    tiny_model_types,
)
from pipeline.tiny import random_model, tiny_config

CONF = Path(__file__).resolve().parents[3] / "conf"


@pytest.mark.parametrize("model_type", tiny_model_types())
def test_block_by_block_forward_equals_full_forward(model_type: str) -> None:
    model = random_model(tiny_config(model_type), seed=1)
    adapter = adapter_for(model)
    assert model.config.model_type == model_type and model_type in adapter.model_types
    ids = torch.randint(0, 256, (2, 12))
    hidden, kwargs = adapter.block_inputs(ids)
    for block in adapter.decoder_layers():
        hidden = adapter.run_block(block, hidden, kwargs)
    # HF's last hidden_states entry has the final norm applied: compare with the last block's raw output.
    captured = {}
    handle = adapter.decoder_layers()[-1].register_forward_hook(lambda m, a, o: captured.setdefault("out", o))
    model(ids)
    handle.remove()
    out = captured["out"][0] if isinstance(captured["out"], tuple) else captured["out"]
    torch.testing.assert_close(hidden, out, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model_type", tiny_model_types())
def test_layout_and_parameter_counts(model_type: str) -> None:
    model = random_model(tiny_config(model_type), seed=0)
    adapter = adapter_for(model)
    heads = adapter.head_layout()
    config = model.config
    assert heads.num_heads == config.num_attention_heads
    assert heads.num_kv_heads == (getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    assert heads.rope == (model_type != "opt")
    # Every dense weight of the blocks' linears, counted once whether a module is fused (Phi-3) or not.
    modules = {output_source(m)[0] for layer in adapter.layers()
               for m in (layer.q_proj, layer.k_proj, layer.v_proj, layer.o_proj, layer.up_proj, layer.gate_proj,
                         layer.down_proj) if m is not None}
    assert adapter.block_linear_params() == sum(p.numel() for m in modules for p in m.parameters())
    assert adapter.total_params() == sum(p.numel() for p in model.parameters())  # tied weights count once


def test_fused_phi3_projections_are_read_as_slices_of_the_fused_weights() -> None:
    model = random_model(tiny_config("phi3"), seed=0)
    layer = adapter_for(model).layer(0)
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    stacked = torch.cat([layer.q_proj.weight, layer.k_proj.weight, layer.v_proj.weight])
    assert torch.equal(stacked, attn.qkv_proj.weight)
    x = torch.randn(3, model.config.hidden_size)
    gate, up = mlp.gate_up_proj(x).chunk(2, dim=-1)  # what Phi3MLP computes
    torch.testing.assert_close(x @ layer.gate_proj.weight.T, gate)
    torch.testing.assert_close(x @ layer.up_proj.weight.T, up)
    assert layer.attention_input is attn.qkv_proj and layer.mlp_hidden is mlp.down_proj


def test_every_list_of_families_is_derived_from_the_registry() -> None:
    from pipeline.assembly import COMPRESSED_CLASSES
    from pipeline.config import ConfigError, compose_config, validate

    assert set(COMPRESSED_CLASSES) == set(families()) == set(ADAPTERS)
    for family, adapter in ADAPTERS.items():
        config_cls, model_cls = COMPRESSED_CLASSES[family]
        assert model_cls.config_class is config_cls
        assert AutoConfig.for_model(config_cls.model_type).__class__ is config_cls  # registered with Auto*
        assert family_of(config_cls.model_type) == family
        for model_type in adapter.model_types:
            assert family_of(model_type) == family
            assert tiny_config(model_type).model_type == model_type
    for path in sorted((CONF / "model").glob("*.yaml")):
        assert yaml.safe_load(path.read_text())["family"] in families(), path.name
    with pytest.raises(ConfigError, match="expected one of " + ", ".join(families())):
        validate(compose_config(["model.family=gpt2"]))


def test_unclaimed_model_types_and_mismatched_families_are_refused() -> None:
    model = random_model(tiny_config("llama"))
    with pytest.raises(UnsupportedModelError, match="model.family='gpt2' is unknown"):
        adapter_for(model, "gpt2")
    with pytest.raises(UnsupportedModelError, match="belongs to family 'llama': set model.family=llama"):
        adapter_for(model, "opt")
    model.config.model_type = "gpt_neox"  # was assembled as Llama when named in model.family=llama before
    for family in (None, "llama"):
        with pytest.raises(UnsupportedModelError, match="no adapter for model_type 'gpt_neox'"):
            adapter_for(model, family)


def test_partial_rotary_embeddings_are_refused() -> None:
    model = random_model(tiny_config("phi3", partial_rotary_factor=0.75))
    with pytest.raises(UnsupportedModelError, match="partial_rotary_factor=0.75"):
        adapter_for(model)
