"""HF folders for engines: the stock class loads with no remote code and computes the compressed model; the DeciLM
folder's block_configs reproduce every width through the engines' ffn_mult formula."""

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from pipeline.export.hf import engine_width, ffn_mult_for, write_hf
from pipeline.export.layout import ExportError, engine_model
from pipeline.tiny import byte_tokenizer, tiny_engine_shaped


def test_stock_folder_is_the_familys_class_with_the_same_logits(tmp_path) -> None:
    model = tiny_engine_shaped("llama", [64, 64, 64])
    write_hf(engine_model(model, "stock"), byte_tokenizer(), tmp_path / "stock", "stock")
    stock = AutoModelForCausalLM.from_pretrained(tmp_path / "stock")  # no trust_remote_code
    assert type(stock).__name__ == "LlamaForCausalLM" and stock.config.intermediate_size == 64
    ids = torch.tensor([[1, 5, 9, 30, 200, 17]])
    with torch.no_grad():
        assert torch.allclose(stock(ids).logits, model(ids).logits, atol=1e-5)


def test_stock_refuses_mixed_widths(tmp_path) -> None:
    with pytest.raises(ExportError, match="differ between layers.*compression.shape=stock"):
        engine_model(tiny_engine_shaped("llama", [32, 96, 64]), "stock")


@pytest.mark.parametrize("width", [256, 512, 768, 1280, 14336])
@pytest.mark.parametrize("hidden", [64, 576, 896, 4096, 8192])
def test_ffn_mult_gives_back_each_width(width, hidden) -> None:
    assert engine_width(ffn_mult_for(width, hidden), hidden) == width


def test_deci_folder_config_reads_back_per_layer_widths(tmp_path) -> None:
    model = tiny_engine_shaped("qwen2", [256, 768, 512], hidden_size=64, intermediate_size=768, head_dim=32)
    write_hf(engine_model(model), byte_tokenizer(), tmp_path / "deci", "deci")
    raw = json.loads((tmp_path / "deci" / "config.json").read_text())
    assert raw["architectures"] == ["DeciLMForCausalLM"] and raw["attention_bias"] is True
    config = AutoConfig.from_pretrained(tmp_path / "deci", trust_remote_code=True)
    widths = [engine_width(b.ffn.ffn_mult, config.hidden_size) for b in config.block_configs]
    assert widths == [256, 768, 512]
    assert {config.num_attention_heads // b.attention.n_heads_in_group for b in config.block_configs} == {2}
    # the RoPE base reaches engines that read rope_theta (not only transformers 5's rope_parameters)
    assert raw["rope_theta"] == config.rope_theta == model.config.rope_parameters["rope_theta"] != 10000.0
    # the config module the folder carries imports on its own (the engines load it as remote code)
    code = f"import sys; sys.path.insert(0, {str(tmp_path / 'deci')!r}); import configuration_decilm"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)


def test_deci_writes_off_grid_widths_as_intermediate_size(tmp_path, caplog) -> None:
    """vLLM reads ffn.intermediate_size where a block has no ffn_mult (SGLang / TRT-LLM do not: a warning says so)."""
    model = tiny_engine_shaped("llama", [32, 96, 64], intermediate_size=256)
    write_hf(engine_model(model), byte_tokenizer(), tmp_path / "deci", "deci")
    blocks = json.loads((tmp_path / "deci" / "config.json").read_text())["block_configs"]
    assert [b["ffn"] for b in blocks][0] == {"no_op": False, "replace_with_linear": False, "intermediate_size": 32}
    assert "not multiples of 256" in caplog.text
    with pytest.raises(ExportError, match="MLP width 96 is not a positive multiple of 256"):
        ffn_mult_for(96, 64)
