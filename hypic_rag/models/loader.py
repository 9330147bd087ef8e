"""Loading a local transformers checkpoint (no hub access), and the LoadedModel bundle every
executor over one model shares: the model, its tokenizer and what is read off it once (layer spec,
mixers, rotary embedding, device, dtype, vocabulary, EOS ids, shared-prefix caches)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from hypic_rag.errors import RequestError
from hypic_rag.models.registry import linear_mixer, model_spec
from hypic_rag.models.specs import ModelSpec


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


def eos_ids_of(model: torch.nn.Module, tokenizer) -> frozenset[int]:
    """Every EOS id the generation config, the model config and the tokenizer name."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        eos = getattr(source, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, (list, tuple)):
            ids.update(int(e) for e in eos)
    return frozenset(ids)


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """One model and what every executor over it needs, read once.

    prefix_caches: the cache after each shared prefix, filled by the executors (read-only: an
    executor copies one before extending it), so executors for several rungs run a prefix once.
    lean_runtimes: the lean runtime over this model after each shared prefix, compiled or not (runtime/), built on
    first use by the executors that run on it."""

    model: torch.nn.Module
    tokenizer: object
    spec: ModelSpec
    mixers: dict[int, torch.nn.Module]
    rotary_emb: torch.nn.Module | None
    device: torch.device
    dtype: torch.dtype
    vocab_size: int
    eos_ids: frozenset[int]
    model_path: Path | None = None
    prefix_caches: dict = field(default_factory=dict, repr=False)
    lean_runtimes: dict = field(default_factory=dict, repr=False)

    def lean_runtime(self, shared_prefix: tuple[int, ...], compile_graphs: bool = False):
        """The lean runtime after `shared_prefix`, compiling its captured paths or not (one runtime
        each; UnsupportedModelError for a family not ported)."""
        key = (shared_prefix, compile_graphs)
        if key not in self.lean_runtimes:
            from hypic_rag.runtime.lean_request import LeanRuntime

            self.lean_runtimes[key] = LeanRuntime(self.model, shared_prefix, compile_graphs)
        return self.lean_runtimes[key]

    @classmethod
    def of(cls, model: torch.nn.Module, tokenizer=None, model_path: str | Path | None = None) -> "LoadedModel":
        """The bundle of an already loaded model (put in eval mode)."""
        model = model.eval()
        spec = model_spec(model)
        first = next(model.parameters())
        return cls(
            model=model, tokenizer=tokenizer, spec=spec,
            mixers={layer.layer_idx: linear_mixer(model, layer.layer_idx) for layer in spec.linear},
            rotary_emb=getattr(getattr(model, "model", model), "rotary_emb", None), device=first.device,
            dtype=first.dtype, vocab_size=model.config.get_text_config(decoder=True).vocab_size,
            eos_ids=eos_ids_of(model, tokenizer), model_path=None if model_path is None else Path(model_path),
        )

    @classmethod
    def load(cls, path: str | Path, dtype: torch.dtype | None = None, device: str | None = None) -> "LoadedModel":
        """Load a local checkpoint (see load_model) into a bundle that remembers its path."""
        model, tokenizer = load_model(path, dtype=dtype, device=device)
        return cls.of(model, tokenizer, Path(path).resolve())
