"""Which retrieved documents never reached a prompt.

A stuffing chain retrieves documents (through the integrations' retrievers, or any retriever that
calls HypicRAG.note_retrieved) and formats them into a prompt. A document that is retrieved but
cannot be found in the prompt (formatted beyond recognition, truncated, filtered out) is neither a
cache hit nor a miss, and would go unnoticed. The ledger keeps recent retrievals, marks the ids
each prompt's plan found on the newest retrieval holding them, and once a retrieval has settled (older than `settle_after` seconds, or
on close) reports the ids of a retrieval that fed some prompt but never appeared in one. A
retrieval that fed no prompt at all is dropped silently (nothing says it was meant for one).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable


@dataclass
class _Retrieval:
    at: float
    ids: tuple[str, ...]
    seen: set[str] = field(default_factory=set)
    on_answer: Callable[[dict], None] | None = None


class RetrievalLedger:
    def __init__(self, report: Callable[[list[str]], None], settle_after: float = 30.0, keep: int = 256):
        self._report, self.settle_after = report, settle_after
        self._open: deque[_Retrieval] = deque()
        self._keep = keep
        self._lock = threading.Lock()

    def retrieved(self, ids: Iterable[str], on_answer: Callable[[dict], None] | None = None) -> None:
        """`on_answer(figures)`: called with the cache figures of each request a prompt of this
        retrieval makes (LlamaIndex's nodes carry them into Response.metadata)."""
        with self._lock:
            self._open.append(_Retrieval(time.monotonic(), tuple(ids), on_answer=on_answer))
        self.settle()

    def found_in_prompt(self, ids: Iterable[str]) -> Callable[[dict], None] | None:
        """A prompt's found ids belong to the newest open retrieval that holds any of them (a chain
        formats what it has just retrieved; refine-style chains spread one retrieval over prompts).
        Returns that retrieval's on_answer, if any."""
        found, on_answer = set(ids), None
        with self._lock:
            for retrieval in reversed(self._open):
                if found & set(retrieval.ids):
                    retrieval.seen |= found & set(retrieval.ids)
                    on_answer = retrieval.on_answer
                    break
        self.settle()
        return on_answer

    def settle(self, older_than: float | None = None) -> None:
        """Report the settled retrievals (older than `older_than` seconds; default settle_after)."""
        limit = time.monotonic() - (self.settle_after if older_than is None else older_than)
        unused: list[str] = []
        with self._lock:
            while self._open and (self._open[0].at <= limit or len(self._open) > self._keep):
                retrieval = self._open.popleft()
                if retrieval.seen:
                    unused += [i for i in retrieval.ids if i not in retrieval.seen]
        if unused:
            self._report(unused)
