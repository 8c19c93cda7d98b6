"""Generation with the KV cache (K and V cached at different widths) equals generation without it."""

from __future__ import annotations

import pytest
import torch
from modeling_fixtures import MODEL_TYPES, layer_dims, make_dense, random_solutions

from pipeline.adapters import adapter_for
from pipeline.assembly import build_compressed_model, identity_solutions
from pipeline.modeling.modeling_modegpt import CacheNotFilledError


def _prompt(seed: int, padding: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two random 7-token prompts; the first left-padded by ``padding`` tokens (the decoder then passes explicit
    masks, also to the one-token steps)."""
    ids = torch.randint(3, 128, (2, 7), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    ids[0, :padding], mask[0, :padding] = 0, 0
    return ids, mask


@pytest.mark.parametrize("family", MODEL_TYPES)
@pytest.mark.parametrize("padded", [False, True])
def test_greedy_generation_with_and_without_cache(family: str, padded: bool) -> None:
    dense = make_dense(family)
    adapter = adapter_for(dense)
    model = build_compressed_model(dense, adapter, *random_solutions(adapter))
    ids, mask = _prompt(seed=11, padding=2 if padded else 0)
    kwargs = {"attention_mask": mask, "max_new_tokens": 5, "do_sample": False, "pad_token_id": 0, "eos_token_id": None}
    with torch.no_grad():
        cached = model.generate(ids, use_cache=True, **kwargs)
        uncached = model.generate(ids, use_cache=False, **kwargs)
    assert cached.shape == (2, 12)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("family", MODEL_TYPES)
@pytest.mark.parametrize("padded", [False, True])
def test_cached_greedy_decoding_at_rate_0_equals_the_dense_transformers_model(family: str, padded: bool) -> None:
    """A cache bug shows as a difference from transformers itself, not only from the uncached path."""
    dense = make_dense(family)
    adapter = adapter_for(dense)
    model = build_compressed_model(dense, adapter, *identity_solutions(adapter))
    ids, mask = _prompt(seed=5, padding=3 if padded else 0)
    kwargs = {"attention_mask": mask, "max_new_tokens": 8, "do_sample": False, "pad_token_id": 0,
              "eos_token_id": None, "use_cache": True, "return_dict_in_generate": True, "output_logits": True}
    with torch.no_grad():
        want = dense.generate(ids, **kwargs)
        got = model.generate(ids, **kwargs)
    assert torch.equal(got.sequences, want.sequences)
    # Tokens of a random tiny model hardly depend on context; every step's logits do.
    for step, (a, b) in enumerate(zip(got.logits, want.logits, strict=True)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=lambda m, step=step: f"step {step}: {m}")


def test_a_cache_the_attention_never_fills_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    """If a transformers release hands the cache over in a way the attention does not see, decoding must not
    silently go on without it (the 5.24 rename produced garbage text that way)."""
    from pipeline.modeling import modeling_modegpt

    dense = make_dense("llama")
    adapter = adapter_for(dense)
    model = build_compressed_model(dense, adapter, *identity_solutions(adapter))
    ids = torch.randint(3, 128, (1, 5), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        model(ids, use_cache=False)  # no cache: nothing to check
        monkeypatch.setattr(modeling_modegpt, "find_cache", lambda kwargs: None)
        with pytest.raises(CacheNotFilledError, match="did not pass the KV cache"):
            model(ids, use_cache=True)
        with pytest.raises(CacheNotFilledError):
            model(ids, use_cache=True, return_dict=False)


def test_find_cache_matches_by_type_under_any_argument_name() -> None:
    from transformers import DynamicCache

    from pipeline.modeling.modeling_modegpt import find_cache

    cache = DynamicCache()
    for name in ("cache", "past_key_values", "past_key_value", "some_future_name"):
        assert find_cache({name: cache, "use_cache": True}) is cache
    assert find_cache({"use_cache": True}) is None
    with pytest.raises(CacheNotFilledError, match="several"):
        find_cache({"cache": cache, "past_key_values": DynamicCache()})


def test_cache_holds_keys_and_values_at_their_own_widths() -> None:
    dense = make_dense("llama")
    adapter = adapter_for(dense)
    model = build_compressed_model(dense, adapter, *random_solutions(adapter))
    ids = torch.randint(3, 128, (1, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = model(ids, use_cache=True)
        cache = out.past_key_values
        for i, (_, qk, v) in enumerate(layer_dims(adapter)):
            assert cache.layers[i].keys.shape == (1, 2, 6, qk)
            assert cache.layers[i].values.shape == (1, 2, 6, v)
        # a multi-token continuation on a filled cache: bottom-right causal alignment
        more = torch.randint(3, 128, (1, 3), generator=torch.Generator().manual_seed(4))
        step = model(more, past_key_values=cache, use_cache=True).logits
        full = model(torch.cat([ids, more], dim=1)).logits[:, -3:]
    torch.testing.assert_close(step, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("q_len", "v_dim"), [(1, 6), (1, 8), (3, 6), (9, 8), (9, 6)])
def test_attention_kernel_paths_agree_with_a_plain_masked_softmax(q_len: int, v_dim: int) -> None:
    """Packed decoding, enable_gqa, repeated KV and the bottom-right causal mask all equal the textbook formula."""
    from pipeline.modeling.modeling_modegpt import _attend

    g = torch.Generator().manual_seed(q_len * 10 + v_dim)
    batch, n_h, n_kv, kv_len, qk = 2, 6, 2, 9, 8
    q = torch.randn(batch, n_h, q_len, qk, generator=g)
    k, v = torch.randn(batch, n_kv, kv_len, qk, generator=g), torch.randn(batch, n_kv, kv_len, v_dim, generator=g)
    keep = torch.ones(q_len, kv_len, dtype=torch.bool).tril(kv_len - q_len)  # query t sits at kv_len - q_len + t
    scores = q @ k.repeat_interleave(3, dim=1).transpose(-1, -2) * 0.25
    want = scores.masked_fill(~keep, float("-inf")).softmax(-1) @ v.repeat_interleave(3, dim=1)
    torch.testing.assert_close(_attend(q, k, v, None, scale=0.25, dropout=0.0), want, atol=1e-5, rtol=1e-5)
    mask = keep.expand(batch, 1, q_len, kv_len)
    torch.testing.assert_close(_attend(q, k, v, mask, scale=0.25, dropout=0.0), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("masked", [False, True])
def test_prefill_with_unequal_qk_and_v_widths_runs_a_fused_kernel(masked: bool) -> None:
    """Compression leaves q/k and v at different widths, for which SDPA would pick its slow math kernel."""
    from torch.profiler import ProfilerActivity, profile

    from pipeline.modeling.modeling_modegpt import _attend

    q, k, v = torch.randn(2, 6, 9, 8), torch.randn(2, 2, 9, 8), torch.randn(2, 2, 9, 6)
    mask = torch.ones(9, 9, dtype=torch.bool).tril().expand(2, 1, 9, 9) if masked else None
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out = _attend(q, k, v, mask, scale=0.25, dropout=0.0)
    kernels = {e.key for e in prof.key_averages() if e.key.startswith("aten::_scaled_dot_product_")}
    assert kernels == {"aten::_scaled_dot_product_flash_attention_for_cpu"}
    assert out.shape == (2, 6, 9, 6)


def test_kernel_width_is_one_width_for_q_k_and_v_and_a_multiple_of_8_on_cuda() -> None:
    from pipeline.modeling.modeling_modegpt import kernel_width

    assert kernel_width(44, 45, torch.device("cpu")) == 45
    assert kernel_width(48, 40, torch.device("cpu")) == 48
    assert kernel_width(44, 45, torch.device("cuda", 0)) == 48  # needs no GPU: only the device type is read
    assert kernel_width(64, 64, torch.device("cuda")) == 64
