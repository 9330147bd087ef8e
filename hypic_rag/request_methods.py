"""HypicRAG's request methods: stream, query and their prompt and asyncio forms.

Every request is retrieved (or matched against the prompt) on the caller's thread, then runs on the
store's RequestWorker (hypic_rag/request_worker.py), the one owner of the model: a caller never
holds a lock while it reads its stream, so streams may be read from any thread, from asyncio,
abandoned or cancelled, and other requests are still served.
"""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator, Iterator

from hypic_rag.config import Mode, RequestOptions
from hypic_rag.index.segment_index import RetrievedSegment
from hypic_rag.errors import RequestError
from hypic_rag.prompt_match import PromptPlan, plan_prompt, question_of
from hypic_rag.request_worker import Job
from hypic_rag.results import QueryResult


PROMPT_FORMATS = ("as_is", "store")


def first_line(text: str) -> str:
    return text.strip().split("\n", 1)[0].strip()


class RequestMethods:
    """Mixed into HypicRAG (which provides retrieval, the executors, the worker and the lock)."""

    def _question_job(self, question, k, segment_ids, options: RequestOptions, timeout) -> Job:
        t0 = time.perf_counter()
        segments = self._segments(question, k, segment_ids)
        retrieval = time.perf_counter() - t0
        token_lists = [s.record.token_ids for s in segments]
        question_ids = self.question_ids(question)
        return self._submit(token_lists, question_ids, segments, retrieval, options, timeout)

    def diagnose(self, question: str, k: int = 4, mode: Mode | str | None = None, segment_ids: list[str] | None = None,
                 threshold: float = 0.05, timeout: float | None = None):
        """Where a cached rung (default: the store's) departs from full recompute for this question: each
        layer's relative hidden-state error at the question's tokens, the first layer over `threshold`
        and the first-token KL (a Diagnosis; .table() prints it). Retrieval as in query()."""
        segments = self._segments(question, k, segment_ids)
        token_lists = [s.record.token_ids for s in segments]
        question_ids = self.question_ids(question)

        def run():
            with self._lock:
                options = self.options(mode)
                return self.executor_for(options.mode).diagnose(token_lists, question_ids, options.mode, threshold)

        return self._worker.run(run, timeout)

    def stream(self, question: str, k: int = 4, mode: Mode | str | None = None,
               max_new_tokens: int | None = None, segment_ids: list[str] | None = None,
               temperature: float | None = None, top_p: float | None = None, seed: int | None = None,
               stop: str | list[str] | None = None, options: RequestOptions | None = None,
               timeout: float | None = None) -> Iterator:
        """Yield text pieces as they are generated, then the QueryResult as the last item.

        The question is formatted with the store's template; segments are retrieved (top k) unless
        segment_ids names them. The rung (mode) and decoding settings are this call's: pass them
        one by one, or as one RequestOptions (`options`); those left None take the store's defaults.
        Decoding ends at the first stop string, which the answer does not include. The request runs
        on this store's worker thread: the stream may be read from any thread or abandoned (the
        request stops at its next token); `timeout` (seconds, queueing included) cancels it and
        raises RequestError."""
        options = options or self.options(mode, max_new_tokens, temperature, top_p, seed, stop)
        yield from self._question_job(question, k, segment_ids, options, timeout)

    async def astream(self, question: str, k: int = 4, mode: Mode | str | None = None,
                      max_new_tokens: int | None = None, segment_ids: list[str] | None = None,
                      temperature: float | None = None, top_p: float | None = None, seed: int | None = None,
                      stop: str | list[str] | None = None, options: RequestOptions | None = None,
                      timeout: float | None = None) -> AsyncIterator:
        """stream() for asyncio: the event loop never blocks; cancelling the task cancels the request."""
        options = options or self.options(mode, max_new_tokens, temperature, top_p, seed, stop)
        job = await asyncio.to_thread(self._question_job, question, k, segment_ids, options, timeout)
        async for item in job.aiter():
            yield item

    def query(self, question: str, k: int = 4, mode: Mode | str | None = None, max_new_tokens: int | None = None,
              segment_ids: list[str] | None = None, temperature: float | None = None, top_p: float | None = None,
              seed: int | None = None, stop: str | list[str] | None = None,
              options: RequestOptions | None = None, timeout: float | None = None) -> QueryResult:
        """stream(), collected: the QueryResult."""
        *_, result = self.stream(question, k, mode, max_new_tokens, segment_ids, temperature, top_p, seed, stop,
                                 options, timeout)
        return result

    async def aquery(self, question: str, k: int = 4, mode: Mode | str | None = None,
                     max_new_tokens: int | None = None, segment_ids: list[str] | None = None,
                     temperature: float | None = None, top_p: float | None = None, seed: int | None = None,
                     stop: str | list[str] | None = None, options: RequestOptions | None = None,
                     timeout: float | None = None) -> QueryResult:
        """astream(), collected: the QueryResult."""
        items = [i async for i in self.astream(question, k, mode, max_new_tokens, segment_ids, temperature, top_p,
                                               seed, stop, options, timeout)]
        return items[-1]

    def _prompt_job(self, prompt: str, options: RequestOptions, timeout, prompt_format: str = "as_is") -> Job:
        if prompt_format not in PROMPT_FORMATS:
            raise RequestError(f"prompt_format must be one of {', '.join(PROMPT_FORMATS)}, got {prompt_format!r}")
        t0 = time.perf_counter()
        plan = plan_prompt(prompt, self.index, lambda record: self.template.segment_parts(record.title))
        on_answer = self.retrievals.found_in_prompt(plan.matched_ids)
        if prompt_format == "store" and plan.matched_ids:  # the documents and the question, the store's way
            question = self.template.question.format(question=question_of(plan))
            plan = PromptPlan([p for p in plan.pieces if p.record is not None], question)
        retrieval = time.perf_counter() - t0
        token_lists, segments, transient = [], [], []
        for piece in plan.pieces:
            if piece.record is not None:
                record = self._checked(piece.record)
                token_lists.append(record.token_ids)
                segments.append(RetrievedSegment(record, float("nan"), len(segments)))
            else:  # the user's own text around the documents: computed for this request, never stored
                transient.append(len(token_lists))
                token_lists.append(tuple(self.tokenizer.encode(piece.text, add_special_tokens=False)))
        question_ids = self.tokenizer.encode(plan.question, add_special_tokens=False)
        return self._submit(token_lists, question_ids, segments, retrieval, options, timeout, transient, on_answer)

    def stream_prompt(self, prompt: str, mode: Mode | str | None = None,
                      max_new_tokens: int | None = None, temperature: float | None = None,
                      top_p: float | None = None, seed: int | None = None, stop: str | list[str] | None = None,
                      options: RequestOptions | None = None, timeout: float | None = None,
                      prompt_format: str = "as_is") -> Iterator:
        """Like stream, for a finished prompt with documents stuffed in as text, formatted any way:
        stored segments found in it are reused from the cache, and the prompt's other text is
        computed for this request (never stored). prompt_format "as_is" sends the prompt as it is
        (the text after the last document is the question, verbatim); "store" sends the found
        documents and the prompt's question (its "Question:"/"Query:" line) in the store's own
        template, dropping the rest (a prompt with no stored document is sent as it is)."""
        options = options or self.options(mode, max_new_tokens, temperature, top_p, seed, stop)
        yield from self._prompt_job(prompt, options, timeout, prompt_format)

    async def astream_prompt(self, prompt: str, mode: Mode | str | None = None,
                             max_new_tokens: int | None = None, temperature: float | None = None,
                             top_p: float | None = None, seed: int | None = None,
                             stop: str | list[str] | None = None, options: RequestOptions | None = None,
                             timeout: float | None = None, prompt_format: str = "as_is") -> AsyncIterator:
        """stream_prompt() for asyncio."""
        options = options or self.options(mode, max_new_tokens, temperature, top_p, seed, stop)
        job = await asyncio.to_thread(self._prompt_job, prompt, options, timeout, prompt_format)
        async for item in job.aiter():
            yield item

    def query_prompt(self, prompt: str, mode: Mode | str | None = None, max_new_tokens: int | None = None,
                     temperature: float | None = None, top_p: float | None = None,
                     seed: int | None = None, stop: str | list[str] | None = None,
                     options: RequestOptions | None = None, timeout: float | None = None,
                     prompt_format: str = "as_is") -> QueryResult:
        """stream_prompt(), collected: the QueryResult."""
        *_, result = self.stream_prompt(prompt, mode, max_new_tokens, temperature, top_p, seed, stop, options,
                                        timeout, prompt_format)
        return result

    def _submit(self, token_lists, question_ids, segments, retrieval, options: RequestOptions, timeout,
                transient=(), on_answer=None) -> Job:
        return self._worker.submit(
            lambda: self._execute(token_lists, question_ids, segments, retrieval, options, transient, on_answer),
            timeout)

    def _execute(self, token_lists, question_ids, segments, retrieval, options: RequestOptions,
                 transient=(), on_answer=None) -> Iterator:
        """On the worker thread: the request itself (text pieces, then the QueryResult)."""
        with self._lock:
            executor = self.executor_for(options.mode)
            before = self.store.hits()
            result = None
            for event in executor.stream(token_lists, question_ids, options=options, transient=transient):
                if event.result is not None:
                    result = event.result
                elif event.text:
                    yield event.text
            after = self.store.hits()
        tiers = {name: after[name] - before[name] for name in after}
        answered = QueryResult(first_line(result.text or ""), segments, result, retrieval, tiers)
        self._count(answered, executor.config.mode.value if options.mode is None else Mode.parse(options.mode).value)
        if on_answer is not None:
            on_answer(answered.to_dict())
        yield answered
