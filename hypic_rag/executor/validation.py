"""Checks on what a request hands the executor, with messages that say how to fix the input."""

from __future__ import annotations

from typing import Sequence

import torch

from hypic_rag.errors import RequestError


def validated_ids(ids: Sequence[int], what: str, vocab_size: int, max_positions: int | None,
                  allow_empty: bool = False) -> tuple[int, ...]:
    """`ids` as a tuple of ints in [0, vocab_size), no longer than the model's positions."""
    if isinstance(ids, torch.Tensor):
        ids = ids.reshape(-1).tolist()
    if isinstance(ids, (str, bytes)):
        raise RequestError(f"{what} must be a sequence of token ids, not text; tokenize it first")
    out = tuple(ids)
    if not out and not allow_empty:
        raise RequestError(f"{what} is empty; every segment and the question need at least one token")
    for t in out:
        if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < vocab_size:
            raise RequestError(f"{what} holds {t!r}, not a token id in [0, {vocab_size})")
    if max_positions is not None and len(out) > max_positions:
        raise RequestError(f"{what} has {len(out)} tokens, more than the model's {max_positions} positions; split it")
    return out


def validated_request(segments, question, vocab_size: int, max_positions: int | None, prefix_length: int,
                      max_new_tokens: int) -> tuple[list[tuple[int, ...]], tuple[int, ...]]:
    """The segments and question of one request, checked to fit the model's positions together."""
    if isinstance(segments, (str, bytes)) or not isinstance(segments, Sequence):
        raise RequestError("segments must be a list of token-id sequences")
    segs = [validated_ids(s, f"segment {i}", vocab_size, max_positions) for i, s in enumerate(segments)]
    q = validated_ids(question, "question", vocab_size, max_positions)
    total = prefix_length + sum(len(s) for s in segs) + len(q) + max_new_tokens
    if max_positions is not None and total > max_positions:
        raise RequestError(
            f"request needs {total} positions (prefix + segments + question + max_new_tokens) but the model "
            f"has {max_positions}; retrieve fewer segments or lower max_new_tokens"
        )
    return segs, q
