"""Saved checkpoints load bit-identically: with this project's classes, and as remote code without the project."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from modeling_fixtures import MODEL_TYPES, compressed_class, layer_dims, make_dense, random_solutions
from safetensors import safe_open
from transformers import AutoModelForCausalLM

# Run in a fresh interpreter in isolated mode (-I: no PYTHONPATH, cwd or user site on sys.path), and with the
# project made unimportable even though it is installed in the venv (editable), as on a machine without it.
from pipeline.adapters import adapter_for
from pipeline.assembly import build_compressed_model, save_compressed

LOADER = """
import sys
sys.modules["pipeline"] = None
import torch
from transformers import AutoModelForCausalLM
ids = torch.load(sys.argv[1])
for directory in sys.argv[2:]:
    model = AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    with torch.no_grad():
        torch.save(model(ids).logits, directory + "/remote_logits.pt")
    print(type(model).__name__, model.config.model_type)
"""


def _build(family: str) -> torch.nn.Module:
    dense = make_dense(family)
    adapter = adapter_for(dense)
    return build_compressed_model(dense, adapter, *random_solutions(adapter))


def test_save_then_load_with_and_without_the_project(tmp_path: Path) -> None:
    ids = torch.randint(3, 128, (2, 10), generator=torch.Generator().manual_seed(7))
    torch.save(ids, tmp_path / "ids.pt")
    models, dirs = {}, []
    for family in MODEL_TYPES:
        cls = compressed_class(family)
        model = _build(family)
        directory = tmp_path / family
        save_compressed(model, None, directory, max_shard_size="100KB")
        config = json.loads((directory / "config.json").read_text())
        assert config["auto_map"]["AutoModelForCausalLM"] == f"modeling_modegpt.{cls.__name__}"
        _, qk, v = layer_dims(adapter_for(make_dense(family)))[1]
        assert config["layer_dims"][1] == {"mlp_width": 72, "qk_dim": qk, "v_dim": v}
        assert {"modeling_modegpt.py", "configuration_modegpt.py"} <= {p.name for p in directory.iterdir()}
        shards = sorted(directory.glob("model-*.safetensors"))
        assert len(shards) > 1 and (directory / "model.safetensors.index.json").exists()
        models[family], dirs = model, [*dirs, str(directory)]

        # With the project imported, no remote code is involved: the registered classes load it.
        loaded = AutoModelForCausalLM.from_pretrained(directory).eval()
        assert type(loaded) is cls
        with torch.no_grad():
            assert torch.equal(loaded(ids).logits, model(ids).logits)

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "hf_modules"), TRANSFORMERS_VERBOSITY="error")
    proc = subprocess.run(
        [sys.executable, "-I", "-c", LOADER, str(tmp_path / "ids.pt"), *dirs],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for family in MODEL_TYPES:
        cls = compressed_class(family)
        assert f"{cls.__name__} {cls.config_class.model_type}" in proc.stdout
    for family, directory in zip(models, dirs, strict=True):
        with torch.no_grad():
            want = models[family](ids).logits
        assert torch.equal(torch.load(Path(directory) / "remote_logits.pt"), want), family


def test_checkpoint_holds_the_rope_gather_index(tmp_path) -> None:
    model = _build("llama")
    save_compressed(model, None, tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        gather = f.get_tensor("model.layers.0.self_attn.rope_gather")
    assert torch.equal(gather, model.model.layers[0].self_attn.rope_gather)
    assert gather.shape == (2, 8)
