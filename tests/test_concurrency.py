"""Requests from many threads and tasks at once: one worker owns the model, no lock is held while a
caller reads its stream, and abandoned, cancelled or timed-out streams release the model."""

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import demo_docs, demo_rag
from hypic_rag.config import RequestOptions
from hypic_rag.errors import RequestError

QUESTIONS = [f"Where was {d['title']} born?" for d in demo_docs(12)[:4]]


def _answers(rag, tokens=6):
    return [rag.query(q, k=2, max_new_tokens=tokens).generation.token_ids for q in QUESTIONS]


def test_queries_from_many_threads_answer_as_one_after_another():
    rag = demo_rag()
    want = _answers(rag)
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda q: rag.query(q, k=2, max_new_tokens=6).generation.token_ids, QUESTIONS * 2))
    assert got == want * 2


def test_a_stream_read_on_several_threads_in_turn():
    """LangChain's default _astream resumes one generator on different pool threads."""
    rag = demo_rag()
    stream = rag.stream(QUESTIONS[0], k=2, max_new_tokens=6)
    items = []
    with ThreadPoolExecutor(4) as pool:
        while True:
            item = pool.submit(next, stream, None).result()
            if item is None:
                break
            items.append(item)
    assert items[-1].generation.token_ids == _answers(rag)[0]


def test_a_stream_abandoned_in_one_thread_does_not_block_another_query():
    rag = demo_rag()
    started = threading.Event()

    def abandon():
        stream = rag.stream(QUESTIONS[1], k=2, max_new_tokens=400)
        next(stream)  # started, then dropped unfinished
        started.set()
        time.sleep(0.2)
        stream.close()

    thread = threading.Thread(target=abandon)
    thread.start()
    assert started.wait(60)
    t0 = time.perf_counter()
    result = rag.query(QUESTIONS[2], k=2, max_new_tokens=4)  # queued behind the abandoned one, then served
    thread.join()
    assert result.generation.token_ids == _answers(rag, 4)[2]
    assert time.perf_counter() - t0 < 60


def test_asyncio_tasks_stream_at_once_on_a_large_thread_pool():
    rag = demo_rag()
    want = _answers(rag)

    async def one(question):
        pieces = [item async for item in rag.astream(question, k=2, max_new_tokens=6)]
        result = pieces[-1]
        assert "".join(pieces[:-1]) == result.generation.text
        return result.generation.token_ids

    async def main():
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(16))
        return await asyncio.gather(*[one(q) for q in QUESTIONS * 2])

    assert asyncio.run(main()) == want * 2


def test_a_cancelled_task_cancels_its_request_and_the_next_one_is_served():
    rag = demo_rag()
    progressed = []

    async def long_stream():  # 400 tokens whatever the answer: the stream is still running when cancelled
        long = RequestOptions(max_new_tokens=400, ignore_eos=True)
        async for item in rag.astream(QUESTIONS[3], k=2, options=long):
            progressed.append(item)

    async def main():
        task = asyncio.create_task(long_stream())
        while not progressed:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await rag.aquery(QUESTIONS[0], k=2, max_new_tokens=6)

    result = asyncio.run(asyncio.wait_for(main(), 120))
    assert result.generation.token_ids == _answers(rag)[0]


def test_a_request_past_its_timeout_is_cancelled_with_a_clear_error():
    rag = demo_rag()
    with pytest.raises(RequestError, match="timeout"):
        rag.query(QUESTIONS[0], k=2, max_new_tokens=400, timeout=1e-4)
    with pytest.raises(RequestError, match="timeout must be"):
        rag.query(QUESTIONS[0], k=2, timeout=-1)
    assert rag.query(QUESTIONS[0], k=2, max_new_tokens=6).generation.token_ids == _answers(rag)[0]


def _slow(produced: list, closed: threading.Event, n: int = 1000):
    def produce():
        try:
            for i in range(n):
                time.sleep(0.002)
                produced.append(i)
                yield i
        finally:
            closed.set()  # the generator's cleanup ran (on the worker thread)
    return produce


@pytest.mark.parametrize("how", ["abandoned", "closed", "task cancelled"])
def test_the_worker_stops_a_job_whose_consumer_went_away(how):
    from hypic_rag.request_worker import RequestWorker

    worker = RequestWorker()
    produced, closed = [], threading.Event()
    if how == "task cancelled":
        async def consume():
            async for _ in worker.submit(_slow(produced, closed)).aiter():
                pass

        async def main():
            task = asyncio.create_task(consume())
            await asyncio.sleep(0.05)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        asyncio.run(main())
    else:
        stream = iter(worker.submit(_slow(produced, closed)))
        next(stream)
        if how == "closed":
            stream.close()
        else:
            del stream  # garbage-collected unfinished, as an abandoned LangChain stream is
    assert closed.wait(10) and len(produced) < 1000
    assert worker.run(lambda: "next job") == "next job"  # the worker is free again
    worker.close()


def test_an_error_in_a_job_reaches_its_consumer_and_the_worker_goes_on():
    from hypic_rag.request_worker import RequestWorker

    worker = RequestWorker()

    def failing():
        yield 1
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        list(worker.submit(failing))
    assert worker.run(lambda: 2) == 2
    worker.close()
    with pytest.raises(RequestError, match="closed"):
        worker.submit(lambda: [])
