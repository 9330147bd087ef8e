"""Is a stored entry one this executor computed, for exactly these tokens?

Entries read back from a store directory may be damaged, foreign or forged, and a bad entry must
be dropped and recomputed rather than served or left to fail every later request. Two checks:

- `problem`: the entry's own claims against the request and the model, free: fingerprint, token
  ids, seam size, and every layer's tensor shapes and dtypes against an entry this executor built
  itself (the reference, built once from a short dummy segment).
- `spot_check`: the entry's content against the model, for entries read from a tier outside this
  process (the disk tier): the first `probe_tokens` tokens are recomputed (one batched forward for
  all of a request's disk reads) and their K/V must match the stored ones in every attention layer.
  An entry computed for one document and relabelled with another's tokens and a fresh checksum
  differs there (a segment starts with its own title). It is a spot check, not a proof: only a
  full recompute proves an entry, and a writer who can run the model can forge the probed tokens.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from hypic_rag.types import SegmentEntry

PROBE_TOKENS = 8


def _signature(entry: SegmentEntry) -> dict:
    """Per-layer tensor shapes (the token axis of K/V dropped) and dtypes: what any entry of this
    model and setting must have, whatever its length."""
    sig: dict = {}
    for layer in entry.linear:
        for name in ("interior_state", "interior_operator", "conv_tail"):  # an end state is unused (entries
            # built before 2026-12-03 have one; it is ignored: executor/prefix_anchor.py)
            t = getattr(layer, name)
            sig[("L", layer.layer_idx, name)] = None if t is None else (tuple(t.shape), t.dtype)
    for layer in entry.attention:
        for name, t in (("keys", layer.keys), ("values", layer.values)):
            sig[("A", layer.layer_idx, name)] = (t.shape[0], t.shape[2], t.dtype) if t.dim() == 3 else None
    return sig


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float().to(b.device), b.float()
    return float((a - b).norm() / b.norm().clamp_min(1e-6))


class EntryChecker:
    def __init__(self, fingerprint: str, precompute_seam: int, dtype: torch.dtype,
                 build: Callable[[list[tuple[int, ...]]], list[SegmentEntry]], filler_token: int):
        self.fingerprint = fingerprint
        self.precompute_seam = precompute_seam
        self.tolerance = 1e-3 if dtype == torch.float32 else 5e-2
        self._build = build
        self._filler = filler_token
        self._reference: dict | None = None

    def _reference_signature(self) -> dict:
        if self._reference is None:  # long enough that the interior E and M exist
            self._reference = _signature(self._build([(self._filler,) * (self.precompute_seam + 2)])[0])
        return self._reference

    def problem(self, entry: SegmentEntry, ids: tuple[int, ...]) -> str | None:
        """Why `entry` cannot stand for the segment `ids` on this executor, or None when it can."""
        if entry.fingerprint != self.fingerprint:
            return (f"segment entry was built for {entry.fingerprint}, this executor is {self.fingerprint}; "
                    "rebuild the store with this model, dtype, seam size and shared prefix")
        if entry.token_ids != ids:
            return "segment entry holds other tokens than the segment it is stored for"
        if entry.seam_tokens != min(self.precompute_seam, len(ids)):
            return f"segment entry has seam {entry.seam_tokens}, this executor builds {self.precompute_seam}"
        want = self._reference_signature()
        got = _signature(entry)
        if len(ids) <= self.precompute_seam:  # no interior: E and M are absent by construction
            want = {k: (None if k[2] in ("interior_state", "interior_operator") else v) for k, v in want.items()}
        if got != want:
            bad = sorted((k for k in set(want) | set(got) if want.get(k, "absent") != got.get(k, "absent")), key=str)
            first = bad[0]
            return (f"segment entry's layers do not match this model: {first} holds {got.get(first, 'absent')}, "
                    f"this model's is {want.get(first, 'absent')} ({len(bad)} differences)")
        for layer in entry.attention:
            if layer.keys.shape[1] != len(ids) or layer.values.shape[1] != len(ids):
                return f"segment entry's K/V of layer {layer.layer_idx} do not cover its {len(ids)} tokens"
        return None

    def spot_check(self, entries: Sequence[SegmentEntry]) -> list[bool]:
        """For each entry: do the K/V of its first tokens match a fresh forward over them?"""
        if not entries:
            return []
        probes = self._build([e.token_ids[:PROBE_TOKENS] for e in entries])
        ok = []
        for entry, probe in zip(entries, probes):
            n = len(probe.token_ids)
            errors = [
                max(_relative_error(a.keys[:, :n], p.keys), _relative_error(a.values[:, :n], p.values))
                for a, p in zip(entry.attention, probe.attention)
            ]
            ok.append(all(e <= self.tolerance for e in errors))
        return ok
