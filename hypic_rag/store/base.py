"""What the executor needs from a segment store."""

from __future__ import annotations

from abc import ABC, abstractmethod

from hypic_rag.types import SegmentEntry


class EntryStore(ABC):
    """Maps content keys to SegmentEntry.

    get returns None on a miss and never returns a damaged entry; put may evict other entries but
    never fails because the store is full (an entry too large for every tier is simply not kept).
    Implementations are safe to call from one thread at a time.
    """

    @abstractmethod
    def get(self, key: str) -> SegmentEntry | None: ...

    @abstractmethod
    def put(self, key: str, entry: SegmentEntry) -> None: ...

    @abstractmethod
    def __contains__(self, key: str) -> bool: ...

    @abstractmethod
    def discard(self, key: str) -> None:
        """Forget `key` in every tier (an entry found damaged or foreign after it was read)."""

    @property
    def last_read_untrusted(self) -> bool:
        """Whether the last get's entry came from outside this process (a file another process or
        machine may have written), so that its content deserves a check before it is served."""
        return False
