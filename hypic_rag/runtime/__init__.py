"""The lean runtime: a per-family forward over the transformers-loaded weights (see qwen3_5.py)."""
