"""Export: a compressed model in the formats serving engines load (HF DeciLM / stock folders, GGUF)."""
