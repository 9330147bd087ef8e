"""Generated tokens to streamed text: whole characters only, and stop strings that end decoding.

The answer is decoded whole at every token (a multi-byte character split over two tokens comes out
once both are in, never as a replacement character), and only text that can no longer turn into a
stop string is released: a suffix that is the start of some stop string is held back until the next
token settles it. Once the text holds a stop string, the answer ends just before it.
"""

from __future__ import annotations

from typing import Sequence

_REPLACEMENT = "\ufffd"  # what a tokenizer decodes an incomplete UTF-8 sequence to


class TextStream:
    def __init__(self, tokenizer, stop: Sequence[str] = (), skip_ids: frozenset[int] = frozenset()):
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.skip_ids = skip_ids
        self.tokens: list[int] = []
        self.shown = ""  # text released so far
        self.stopped = False  # a stop string was found; nothing after it is released
        self._text = ""

    def push(self, token: int) -> str:
        """Add a generated token; return the newly released text ("" while held back)."""
        self.tokens.append(token)
        if token in self.skip_ids:
            return ""
        self._text = self.tokenizer.decode([t for t in self.tokens if t not in self.skip_ids],
                                           skip_special_tokens=True)
        cut = min((at for at in (self._text.find(s) for s in self.stop) if at >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            return self._release(self._text[:cut])
        ready = self._text.rstrip(_REPLACEMENT) if self._text.endswith(_REPLACEMENT) else self._text
        return self._release(ready[: len(ready) - self._held_back(ready)])

    def finish(self) -> str:
        """Release what is still held back (decoding ended without completing a stop string)."""
        if self.stopped:
            return ""
        return self._release(self._text)

    @property
    def text(self) -> str:
        """The answer: everything released, and after finish() the whole text before any stop string."""
        return self.shown

    def _held_back(self, text: str) -> int:
        """Length of the longest suffix of `text` that begins some stop string."""
        longest = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), longest, -1):
                if s.startswith(text[len(text) - n:]):
                    longest = n
                    break
        return longest

    def _release(self, visible: str) -> str:
        if len(visible) <= len(self.shown):  # released text is never retracted
            return ""
        delta, self.shown = visible[len(self.shown):], visible
        return delta
