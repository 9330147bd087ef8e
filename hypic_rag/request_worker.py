"""One owner of a model: requests run one at a time on a worker thread and stream back through a queue.

A caller never holds a lock while it consumes a stream, so a stream may be read from any thread (as
LangChain's default `_astream` does, resuming a generator on different pool threads), abandoned
half-way, or consumed from asyncio, and other requests still run. This is the producer-thread plus
queue pattern of transformers' TextIteratorStreamer:

    job = worker.submit(lambda: executor_stream(...))   # a callable returning an iterator
    for item in job: ...                                # or: async for item in job.aiter()
    job.cancel()                                        # the worker stops it at its next item

The worker pulls the job's iterator, puts each item on the job's queue and checks the job's cancel
flag between items: a cancelled, abandoned (garbage-collected) or timed-out stream releases the
model at its next token. An exception in the job is re-raised in the consumer.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from typing import Any, AsyncIterator, Callable, Iterable, Iterator

from hypic_rag.errors import RequestError

_DONE = object()
_POLL = 0.2  # seconds a waiting consumer blocks at a time


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class Job:
    """One submitted request: iterate it (blocking) or `aiter()` it (asyncio); `cancel()` stops it."""

    on_worker = False  # submitted from the worker thread itself: iterated inline, no queue

    def __init__(self, produce: Callable[[], Iterable[Any]], timeout: float | None):
        self._produce = produce
        self._items: queue.Queue = queue.Queue()
        self.cancelled = threading.Event()
        self.timeout = timeout
        self._deadline = None if timeout is None else time.monotonic() + timeout

    def cancel(self) -> None:
        """Stop the request at its next item (also what an abandoned or closed stream does)."""
        self.cancelled.set()

    def _next(self) -> Any:
        while True:  # short waits: a signal (Ctrl-C) reaches the waiting thread even when another thread got it
            left = None if self._deadline is None else self._deadline - time.monotonic()
            if left is not None and left <= 0:
                self.cancel()
                raise RequestError(f"the request did not finish within its timeout of {self.timeout} s and was "
                                   "cancelled (raise timeout= or lower max_new_tokens)")
            try:
                item = self._items.get(timeout=_POLL if left is None else min(left, _POLL))
                break
            except queue.Empty:
                continue
        if isinstance(item, _Failure):
            raise item.error
        return item

    def __iter__(self) -> Iterator[Any]:
        if self.on_worker:
            yield from self._produce()
            return
        try:
            while (item := self._next()) is not _DONE:
                yield item
        finally:
            self.cancel()  # abandoned or finished: the worker stops it at its next item (no-op when done)

    async def aiter(self) -> AsyncIterator[Any]:
        """The items from asyncio: each wait runs in a thread, so the event loop never blocks; a
        cancelled task cancels the job."""
        try:
            while (item := await asyncio.to_thread(self._next)) is not _DONE:
                yield item
        finally:
            self.cancel()

    def _run(self) -> None:
        """On the worker thread: pull the job's iterator until it ends or the job is cancelled."""
        if self.cancelled.is_set():
            self._items.put(_DONE)
            return
        items = None
        try:
            items = iter(self._produce())
            for item in items:
                if self.cancelled.is_set():
                    break
                self._items.put(item)
            self._items.put(_DONE)
        except BaseException as error:  # noqa: BLE001  (handed to the consumer, who raises it)
            self._items.put(_Failure(error))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # a generator's cleanup (its finally blocks) runs here, on the owning thread


class RequestWorker:
    """A daemon thread that runs submitted jobs one after another (started on first use; `close()`
    ends it after the jobs already submitted)."""

    def __init__(self, name: str = "hypic-rag-worker"):
        self._jobs: queue.Queue = queue.Queue()
        self._name = name
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False

    def submit(self, produce: Callable[[], Iterable[Any]], timeout: float | None = None) -> Job:
        """Queue `produce` (a callable returning an iterator); its items come back through the Job.
        `timeout`: seconds for the whole request, queueing included (None: no limit)."""
        if self._closed:
            raise RequestError("this HypicRAG is closed; open the store again to query it")
        if timeout is not None and (not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0):
            raise RequestError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        job = Job(produce, timeout)
        if self.on_worker:  # a job that submits another (e.g. a query inside an ingest callback) runs it inline
            job.on_worker = True
            return job
        self._ensure_started()
        self._jobs.put(job)
        return job

    def run(self, produce: Callable[[], Any], timeout: float | None = None) -> Any:
        """Run one non-streaming call on the worker and return its result."""
        (result,) = list(self.submit(lambda: [produce()], timeout))
        return result

    @property
    def on_worker(self) -> bool:
        """Is the caller the worker thread itself?"""
        return threading.current_thread() is self._thread

    def _ensure_started(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            job._run()

    def close(self) -> None:
        """Refuse new jobs, let the submitted ones finish, and end the thread."""
        self._closed = True
        if self._thread is not None and self._thread.is_alive():
            self._jobs.put(None)
            if not self.on_worker:
                self._thread.join(timeout=30)
