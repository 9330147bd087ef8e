"""Errors a caller can catch apart. Each subclasses ValueError, so `except ValueError` still holds.

HypicError
  RequestError      bad input to a request or a setting (fix the call)
    UnsupportedModelError  a model architecture the library cannot cache (the message lists those it can)
  MissingDependencyError  an optional package a feature needs is not installed (the message names it)
  StoreError        a store that cannot be opened or used (wrong model, damaged file); the message
                    names the file and the repair command
    CorruptEntryError  one stored entry failed a check; it is dropped and recomputed, never served
"""

from __future__ import annotations


class HypicError(ValueError):
    """Base of every error hypic_rag raises on purpose."""


class RequestError(HypicError):
    """A request or setting the library cannot honour as given."""


class StoreError(HypicError):
    """A store directory, or a file in it, that cannot be used as it is."""


class CorruptEntryError(StoreError):
    """A stored entry failed an integrity check; it must be dropped and recomputed."""


class UnsupportedModelError(RequestError):
    """A model whose architecture hypic_rag does not support (the message lists the supported ones)."""


class MissingDependencyError(HypicError):
    """An optional package that a feature needs is not installed."""
