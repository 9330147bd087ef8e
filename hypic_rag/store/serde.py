"""SegmentEntry <-> bytes: safetensors payload behind a magic tag and a SHA-256 checksum.

Layout: b"HYPIC01\\0" | sha256(payload) (32 bytes) | payload (safetensors). Nothing is pickled; a
truncated or altered blob fails the checksum and raises CorruptEntryError.

A blob is untrusted input (it may come from a store copied from elsewhere), so reading one also
checks, before anything is handed on: the safetensors header's declared size against the bytes
present (read_bounded never reads past it), the metadata's types, every tensor named and used,
floating dtypes, K/V lengths equal to the token count, no NaN or Inf, and, given the key it was
stored under, that the key is the content key of the entry's own token ids and fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from typing import BinaryIO

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from hypic_rag.errors import CorruptEntryError
from hypic_rag.store.compression import FRAME_HEADER, MAGIC_Z, compress, decompress, frame_sizes, is_compressed
from hypic_rag.models.fingerprint import segment_key
from hypic_rag.types import AttentionLayerEntry, LinearLayerEntry, SegmentEntry

MAGIC = b"HYPIC01\0"
_HEADER = len(MAGIC) + 32
PREAMBLE = _HEADER + 8  # magic, checksum, safetensors header length
_MAX_HEADER = 100 * 2**20  # safetensors' own bound on its JSON header

__all__ = ["CorruptEntryError", "PREAMBLE", "entry_from_bytes", "entry_to_bytes", "read_bounded"]


_LINEAR_FIELDS = {"end": "end_state", "E": "interior_state", "M": "interior_operator", "conv": "conv_tail"}


def entry_to_bytes(entry: SegmentEntry, compression: str | None = None, level: int = 3) -> bytes:
    """The entry's checksummed blob, inside a zstd or lz4 frame when `compression` names one
    (compression.py)."""
    blob = _plain_bytes(entry)
    return blob if compression is None else compress(blob, compression, level)


def _plain_bytes(entry: SegmentEntry) -> bytes:
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


def _header_length(preamble: bytes, limit: int) -> int:
    if len(preamble) < PREAMBLE or preamble[: len(MAGIC)] != MAGIC:
        raise CorruptEntryError("stored entry has no hypic_rag header (or is truncated)")
    n = int.from_bytes(preamble[_HEADER:PREAMBLE], "little")
    if n > min(_MAX_HEADER, limit - PREAMBLE):
        raise CorruptEntryError(f"stored entry declares a {n}-byte header, more than it may hold")
    return n


def _declared_size(header: bytes) -> int:
    """Total blob size the safetensors header declares (preamble + header + tensor data)."""
    try:
        table = json.loads(header)
        ends = [int(v["data_offsets"][1]) for k, v in table.items() if k != "__metadata__"]
    except Exception as exc:  # a list, missing fields, non-numbers: all the same damage
        raise CorruptEntryError(f"stored entry has a malformed safetensors header: {exc!r}") from None
    return PREAMBLE + len(header) + max(ends, default=0)


def read_bounded(reader: BinaryIO, size: int, limit: int) -> bytes:
    """Read one stored blob of `size` bytes from `reader`, never more than its header declares nor
    more than `limit`: a blob whose declared size is not its real size is refused after the header."""
    magic = reader.read(len(MAGIC))
    if magic == MAGIC_Z:  # a compressed frame: its sizes are declared in its header
        head = magic + reader.read(FRAME_HEADER - len(MAGIC))
        _, _, packed = frame_sizes(head, limit)
        if FRAME_HEADER + packed != size:
            raise CorruptEntryError(f"stored entry holds {size} bytes but its header declares {FRAME_HEADER + packed}")
        return head + reader.read(packed)
    head = magic + reader.read(PREAMBLE - len(MAGIC))
    header = reader.read(_header_length(head, min(size, limit)))
    want = _declared_size(header)
    if want != size or want > limit:
        raise CorruptEntryError(f"stored entry holds {size} bytes but its header declares {want} (limit {limit})")
    return head + header + reader.read(want - PREAMBLE - len(header))


def _ints(value, what: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        raise CorruptEntryError(f"stored entry's {what} is not a list of non-negative integers")
    return value


def _checked(name: str, t: torch.Tensor) -> torch.Tensor:
    if not t.is_floating_point():
        raise CorruptEntryError(f"stored entry's tensor {name} has dtype {t.dtype}, not a floating type")
    if not bool(torch.isfinite(t).all()):
        raise CorruptEntryError(f"stored entry's tensor {name} holds NaN or Inf")
    return t


def entry_from_bytes(blob: bytes, key: str | None = None, limit: int = 2**40) -> SegmentEntry:
    """Parse and check a stored blob, plain or compressed (then at most `limit` bytes uncompressed);
    `key`, when given, must be the entry's own content key."""
    if not isinstance(blob, (bytes, bytearray, memoryview)) or len(blob) < min(PREAMBLE, FRAME_HEADER):
        raise CorruptEntryError("stored entry is truncated or not bytes")
    blob = bytes(blob)
    if is_compressed(blob):
        blob = decompress(blob, limit)
    if len(blob) < PREAMBLE:
        raise CorruptEntryError("stored entry is truncated or not bytes")
    if blob[: len(MAGIC)] != MAGIC:
        raise CorruptEntryError("stored entry has no hypic_rag header")
    payload = blob[_HEADER:]
    if hashlib.sha256(payload).digest() != blob[len(MAGIC) : _HEADER]:
        raise CorruptEntryError("stored entry failed its checksum (truncated or altered)")
    n = _header_length(blob, len(blob))
    if _declared_size(blob[PREAMBLE : PREAMBLE + n]) != len(blob):
        raise CorruptEntryError("stored entry's size differs from what its header declares")
    try:
        meta = json.loads(json.loads(blob[PREAMBLE : PREAMBLE + n])["__metadata__"]["hypic_rag"])
        tensors = {name: _checked(name, t) for name, t in st_load(payload).items()}
        token_ids, linear_idx = _ints(meta["token_ids"], "token_ids"), _ints(meta["linear_layers"], "linear_layers")
        attention_idx = _ints(meta["attention_layers"], "attention_layers")
        seam, fingerprint = meta["seam_tokens"], meta["fingerprint"]
        if not isinstance(seam, int) or seam < 0 or not isinstance(fingerprint, str) or not token_ids:
            raise CorruptEntryError("stored entry's seam, fingerprint or token ids are malformed")
        linear = tuple(
            LinearLayerEntry(idx, *(tensors.pop(f"L{idx}.{short}", None) for short in _LINEAR_FIELDS))
            for idx in linear_idx
        )
        attention = tuple(AttentionLayerEntry(idx, tensors.pop(f"A{idx}.k"), tensors.pop(f"A{idx}.v"))
                          for idx in attention_idx)
    except CorruptEntryError:
        raise
    except Exception as exc:  # safetensors, JSON and key errors alike: the blob is damaged
        raise CorruptEntryError(f"stored entry is malformed: {exc!r}") from None
    if tensors:
        raise CorruptEntryError(f"stored entry holds tensors no layer names: {sorted(tensors)[:4]}")
    if len(set(linear_idx)) != len(linear_idx) or len(set(attention_idx)) != len(attention_idx):
        raise CorruptEntryError("stored entry names a layer twice")
    for a in attention:
        if a.keys.dim() != 3 or a.keys.shape[:2] != a.values.shape[:2] or a.keys.shape[1] != len(token_ids):
            raise CorruptEntryError(f"stored entry's K/V of layer {a.layer_idx} do not cover its {len(token_ids)} tokens")
    if key is not None and segment_key(fingerprint, tuple(token_ids)) != key:
        raise CorruptEntryError("stored entry's tokens and fingerprint do not match the key it is stored under")
    return SegmentEntry(token_ids=tuple(token_ids), seam_tokens=seam, fingerprint=fingerprint, linear=linear,
                        attention=attention)
