"""SegmentEntry <-> bytes: safetensors payload behind a magic tag and a SHA-256 checksum.

Layout: b"HYPIC01\\0" | sha256(payload) (32 bytes) | payload (safetensors). Nothing is pickled; a
truncated or altered blob fails the checksum and raises CorruptEntryError.
"""

from __future__ import annotations

import hashlib
import json

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from hypic_rag.types import AttentionLayerEntry, LinearLayerEntry, SegmentEntry

MAGIC = b"HYPIC01\0"
_HEADER = len(MAGIC) + 32


class CorruptEntryError(ValueError):
    """A stored entry failed its integrity check; it must be dropped and recomputed."""


_LINEAR_FIELDS = {"end": "end_state", "E": "interior_state", "M": "interior_operator", "conv": "conv_tail"}


def entry_to_bytes(entry: SegmentEntry) -> bytes:
    tensors: dict[str, torch.Tensor] = {}
    for layer in entry.linear:
        for short, name in _LINEAR_FIELDS.items():
            t = getattr(layer, name)
            if t is not None:
                tensors[f"L{layer.layer_idx}.{short}"] = t.detach().cpu().contiguous().clone()
    for layer in entry.attention:
        tensors[f"A{layer.layer_idx}.k"] = layer.keys.detach().cpu().contiguous().clone()
        tensors[f"A{layer.layer_idx}.v"] = layer.values.detach().cpu().contiguous().clone()
    fields = {
        "token_ids": list(entry.token_ids),
        "seam_tokens": entry.seam_tokens,
        "fingerprint": entry.fingerprint,
        "linear_layers": [l.layer_idx for l in entry.linear],
        "attention_layers": [a.layer_idx for a in entry.attention],
    }
    # one metadata key: safetensors writes several keys in hash order, which would make equal
    # entries serialise to different bytes
    payload = st_save(tensors, metadata={"hypic_rag": json.dumps(fields, sort_keys=True)})
    return MAGIC + hashlib.sha256(payload).digest() + payload


def _metadata(payload: bytes) -> dict[str, str]:
    header_len = int.from_bytes(payload[:8], "little")
    return json.loads(payload[8 : 8 + header_len]).get("__metadata__", {})


def entry_from_bytes(blob: bytes) -> SegmentEntry:
    if not isinstance(blob, (bytes, bytearray, memoryview)) or len(blob) < _HEADER + 8:
        raise CorruptEntryError("stored entry is truncated or not bytes")
    blob = bytes(blob)
    if blob[: len(MAGIC)] != MAGIC:
        raise CorruptEntryError("stored entry has no hypic_rag header")
    payload = blob[_HEADER:]
    if hashlib.sha256(payload).digest() != blob[len(MAGIC) : _HEADER]:
        raise CorruptEntryError("stored entry failed its checksum (truncated or altered)")
    try:
        meta = json.loads(_metadata(payload)["hypic_rag"])
        tensors = st_load(payload)
        linear = tuple(
            LinearLayerEntry(idx, *(tensors.get(f"L{idx}.{short}") for short in _LINEAR_FIELDS))
            for idx in meta["linear_layers"]
        )
        attention = tuple(
            AttentionLayerEntry(idx, tensors[f"A{idx}.k"], tensors[f"A{idx}.v"])
            for idx in meta["attention_layers"]
        )
        return SegmentEntry(
            token_ids=tuple(meta["token_ids"]),
            seam_tokens=int(meta["seam_tokens"]),
            fingerprint=meta["fingerprint"],
            linear=linear,
            attention=attention,
        )
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
        raise CorruptEntryError(f"stored entry is malformed: {exc}") from exc
