"""Loading a local transformers checkpoint (no hub access): the one place a model is read from disk."""

from __future__ import annotations

from pathlib import Path

import torch

from hypic_rag.errors import RequestError


def load_model(path: str | Path, dtype: torch.dtype | None = None, device: str | None = None):
    """A local HF checkpoint and its tokenizer, in eval mode on `device` (default: CUDA when present,
    in bf16 there and fp32 on the CPU)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise RequestError(f"no model checkpoint at {path} (expected config.json there)")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or (torch.bfloat16 if device == "cuda" else torch.float32)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa").to(device)
    return model.eval(), AutoTokenizer.from_pretrained(path, local_files_only=True)
