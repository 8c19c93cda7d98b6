"""Export: a compressed model in the formats serving engines load (HF DeciLM / stock folders, GGUF)."""

from __future__ import annotations

from typing import Any

EXPORT_FORMATS = ("hf", "gguf")


def export_refusal(cfg: Any) -> str | None:
    """Why ``cfg``'s compressed model cannot be exported (the run chain then skips the stage), or None."""
    if cfg.compression.shape == "free":
        return ("compression.shape=free cuts inside attention heads, which no serving engine runs: "
                "compression.shape=deci (or stock) gives a model vLLM and llama.cpp load (export.formats=[] skips "
                "the export)")
    if cfg.model.family != "llama":
        return (f"model.family={cfg.model.family} has no engine layout here (only the Llama graph: Llama, Mistral, "
                "Qwen2): its compressed checkpoint runs in transformers")
    return None
