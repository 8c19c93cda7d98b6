import pytest
import torch

from pipeline.adapters import adapter_for
from pipeline.tiny import random_model, tiny_config


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_block_by_block_forward_equals_full_forward(family: str) -> None:
    model = random_model(tiny_config(family), seed=1)
    adapter = adapter_for(model)
    assert adapter.family == family
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


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_layout_and_parameter_counts(family: str) -> None:
    model = random_model(tiny_config(family), seed=0)
    adapter = adapter_for(model, family)
    heads = adapter.head_layout()
    if family == "llama":
        assert (heads.num_heads, heads.num_kv_heads, heads.head_dim, heads.rope) == (4, 2, 16, True)
        assert heads.group_size == 2
    else:
        assert (heads.num_kv_heads, heads.rope) == (4, False)
        assert all(adapter.bias_flags().values())
    linear_params = sum(
        p.numel()
        for layer in adapter.layers()
        for mod in (layer.q_proj, layer.k_proj, layer.v_proj, layer.o_proj, layer.up_proj, layer.gate_proj,
                    layer.down_proj)
        if mod is not None
        for p in mod.parameters()
    )
    assert adapter.block_linear_params() == linear_params
    assert adapter.total_params() == sum(p.numel() for p in model.parameters())  # tied weights count once


def test_unknown_family_and_model_type_are_refused() -> None:
    model = random_model(tiny_config("llama"))
    with pytest.raises(ValueError, match="unknown model family 'gpt2'"):
        adapter_for(model, "gpt2")
    model.config.model_type = "gpt_neox"
    with pytest.raises(ValueError, match="no adapter for model_type 'gpt_neox'"):
        adapter_for(model)
