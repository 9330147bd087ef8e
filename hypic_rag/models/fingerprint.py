"""The identity a cache entry belongs to: model (config + weights), dtype, seam size, shared prefix.

Two executors share entries only when their fingerprints are equal, so a different model, dtype,
seam size or shared prefix can never read another's entries.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from dataclasses import dataclass

import torch

from hypic_rag.errors import RequestError

_CHUNK = 16 * 2**20  # bytes of a parameter copied to the host and hashed at a time


def _config_digest(model: torch.nn.Module) -> str:
    config = model.config.to_dict()
    for volatile in ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "_attn_implementation_autoset"):
        config.pop(volatile, None)
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


_DIGESTS: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, str]]" = weakref.WeakKeyDictionary()


def _weights_digest(model: torch.nn.Module) -> str:
    """Hash of every parameter's name, shape, dtype and every byte, so any change of
    any weight gives another fingerprint (a sample of each tensor's ends let a change in the middle
    of every tensor through). Remembered per model until a parameter is replaced or changed in
    place (tracked by tensor identity and version): a 1.4B bf16 model is hashed once per process."""
    state = tuple((id(p), p._version, p.device.type, p.dtype) for p in model.parameters())
    known = _DIGESTS.get(model)
    if known is not None and known[0] == state:
        return known[1]
    digest = _hash_weights(model)
    _DIGESTS[model] = (state, digest)
    return digest


def _hash_weights(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in model.named_parameters():
        h.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        flat = tensor.detach().reshape(-1).view(torch.uint8) if tensor.numel() else tensor.detach().reshape(-1)
        for start in range(0, flat.numel(), _CHUNK):
            h.update(flat[start : start + _CHUNK].cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def tokens_digest(token_ids: tuple[int, ...] | list[int]) -> str:
    return hashlib.sha256(json.dumps(list(token_ids)).encode()).hexdigest()


@dataclass(frozen=True)
class ModelFingerprint:
    model_type: str
    config_digest: str
    weights_digest: str
    dtype: str
    seam_tokens: int
    prefix_digest: str
    interior_dtype: str = "float32"  # entries' E and M (recorded only when not the default)

    @classmethod
    def of(cls, model: torch.nn.Module, seam_tokens: int, shared_prefix: tuple[int, ...],
           interior_dtype: str = "float32") -> "ModelFingerprint":
        dtype = str(next(model.parameters()).dtype).replace("torch.", "")
        return cls(
            model_type=model.config.get_text_config(decoder=True).model_type,
            config_digest=_config_digest(model),
            weights_digest=_weights_digest(model),
            dtype=dtype,
            seam_tokens=seam_tokens,
            prefix_digest=tokens_digest(shared_prefix)[:16],
            interior_dtype=interior_dtype,
        )

    def to_string(self) -> str:
        interior = "" if self.interior_dtype == "float32" else f":i{self.interior_dtype}"
        return (
            f"{self.model_type}:{self.config_digest}:{self.weights_digest}:{self.dtype}:"
            f"w{self.seam_tokens}:p{self.prefix_digest}{interior}"
        )

    @classmethod
    def from_string(cls, text: str) -> "ModelFingerprint":
        parts = text.split(":")
        if (len(parts) not in (6, 7) or not parts[4].startswith("w") or not parts[5].startswith("p")
                or (len(parts) == 7 and not parts[6].startswith("i"))):
            raise RequestError(f"not a hypic_rag model fingerprint: {text!r}")
        interior = parts[6][1:] if len(parts) == 7 else "float32"
        return cls(parts[0], parts[1], parts[2], parts[3], int(parts[4][1:]), parts[5][1:], interior)


def segment_key(fingerprint: ModelFingerprint | str, token_ids: tuple[int, ...]) -> str:
    """Content key of a segment entry: hash of its token ids under one fingerprint."""
    fp = fingerprint if isinstance(fingerprint, str) else fingerprint.to_string()
    return hashlib.sha256((fp + "|" + tokens_digest(token_ids)).encode()).hexdigest()
