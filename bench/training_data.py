"""What the small model of train_small_model.py is trained on: synthetic records laid out as token
sequences (each document tokenized alone, as segments are at query time), per-token loss weights, and
for attention supervision where each answer's value sits in the documents.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import numpy as np
import torch

from hypic_rag.data.synthetic import FACTS, context_text, make_dataset, question_text


@dataclass(frozen=True)
class Encoded:
    """One training sequence. weights: 1 for text trained as text (later scaled by the lm weight), 0 for
    untrained text, -1 for answer tokens. pointers: (query, value) positions, one per single-hop answer
    whose value is found in a document: the token after which the answer is predicted, and the
    document token where that answer's value starts."""

    ids: list[int]
    weights: list[float]
    pointers: list[tuple[int, int]]


def value_offset(doc: dict, question: str, answer: str) -> int | None:
    """Character offset in context_text(doc) where the value answering `question` starts, if this
    document states it (`The K of N is V.` with N the document's title); None otherwise."""
    title = doc["title"]
    for fact, asked in FACTS.values():
        if asked.format(n=title) == question:
            sentence = fact.format(n=title, v=answer)
            at = doc["text"].find(sentence)
            if at < 0:
                return None
            head = len(context_text({"title": title, "text": ""})) - 1  # "Document: N\n"
            return head + at + len(sentence) - 1 - len(answer)
    return None


def encode(record: dict, tokenizer, extra_questions: int = 0, pool: str = "sampled",
           question_lm: bool = False) -> Encoded:
    """bos + each document tokenized alone + question + answer + eos (+ extra question/answer pairs,
    each after the previous answer's eos).

    pool "sampled" takes the extra pairs from record["more_qa"] (one random fact per person); "all"
    from record["all_qa"] (every fact of every person but the one already asked; extra_pairs). The extra
    questions' own tokens are trained as text (weight 1, scaled by the lm weight) when question_lm is
    set, else not at all: continuing a person's name in a question means finding that person's
    document, the lookup an answer needs too."""
    ids, weights = [tokenizer.bos_token_id], [0.0]
    docs = []  # (doc, first position, character offsets of its tokens)
    for doc in record["ctxs"]:
        piece = tokenizer(context_text(doc), add_special_tokens=False, return_offsets_mapping=True)
        docs.append((doc, len(ids), piece["offset_mapping"]))
        ids += piece["input_ids"]
        weights += [1.0] * len(piece["input_ids"])
    pointers = []

    def answer(question: str, value: str, prefix: str, text_weight: float) -> None:
        q = tokenizer.encode(prefix + question_text(question), add_special_tokens=False)
        a = tokenizer.encode(" " + value, add_special_tokens=False) + [tokenizer.eos_token_id]
        ids.extend(q)
        weights.extend([text_weight] * len(q))
        for doc, first, offsets in docs:
            at = value_offset(doc, question, value)
            if at is not None:
                pointers.append((len(ids) - 1, first + next(i for i, (_, end) in enumerate(offsets) if end > at)))
                break
        ids.extend(a)
        weights.extend([-1.0] * len(a))  # marks answer tokens

    answer(record["question"], record["answers"][0], "", 1.0)
    for qa in extra_pairs(record, extra_questions, pool):
        answer(qa["question"], qa["answer"], "\n", float(question_lm))
    return Encoded(ids, weights, pointers)


def extra_pairs(record: dict, count: int, pool: str = "sampled") -> list[dict]:
    """The further {"question", "answer"} pairs a training sequence asks after the record's own
    question: from record["more_qa"], or with pool "all" from record["all_qa"] in a fixed shuffle."""
    extra = record.get("more_qa", [])
    if pool == "all":
        extra = list(record.get("all_qa", []))
        random.Random(record["question"] + record["ctxs"][0]["title"]).shuffle(extra)
    return extra[:count]


def prompt_and_answer(record: dict, tokenizer) -> tuple[list[int], list[int]]:
    """The ids the model reads (bos, documents, question) and the ids of the first answer plus eos."""
    ids = encode(record, tokenizer).ids
    answer_len = len(tokenizer.encode(" " + record["answers"][0], add_special_tokens=False)) + 1
    return ids[:-answer_len], ids[-answer_len:]


@dataclass(frozen=True)
class Batch:
    """Right-padded ids, loss weights (answers 1, text the lm weight, padding 0) and pointer rows
    (sequence, query position, value position)."""

    ids: torch.Tensor
    weights: torch.Tensor
    pointers: torch.Tensor

    def to(self, device) -> "Batch":
        return Batch(*(t.to(device, non_blocking=True) for t in (self.ids, self.weights, self.pointers)))


def batch_of(records, tokenizer, lm_weight: float, extra_questions: int = 0, pool: str = "sampled",
             question_lm: bool = False) -> Batch:
    encoded = [encode(r, tokenizer, extra_questions, pool, question_lm) for r in records]
    width = max(len(e.ids) for e in encoded)
    ids = torch.full((len(encoded), width), tokenizer.pad_token_id)
    w = torch.zeros(len(encoded), width)
    for row, e in enumerate(encoded):
        ids[row, : len(e.ids)] = torch.tensor(e.ids)
        w[row, : len(e.weights)] = torch.tensor([1.0 if x < 0 else x * lm_weight for x in e.weights])
    pointers = torch.tensor([(row, q, v) for row, e in enumerate(encoded) for q, v in e.pointers],
                            dtype=torch.long).view(-1, 3)
    return Batch(ids, w, pointers)


_WORKER_TOKENIZER = None


def _init_worker(tokenizer_dir: str) -> None:
    global _WORKER_TOKENIZER
    from transformers import AutoTokenizer

    torch.set_num_threads(1)
    _WORKER_TOKENIZER = AutoTokenizer.from_pretrained(tokenizer_dir)


def _worker_batch(job: tuple[int, int, int, float, int, str, bool]):
    seed, size, num_docs, lm_weight, extra, pool, question_lm = job
    b = batch_of(make_dataset(size, seed=seed, num_docs=num_docs), _WORKER_TOKENIZER, lm_weight, extra, pool,
                 question_lm)
    return b.ids.numpy(), b.weights.numpy(), b.pointers.numpy()  # torch's fd-passing runs out of handles


def batches(args, tokenizer, tokenizer_dir, rng: random.Random):
    """Endless Batches; built in worker processes when args.data_workers > 0."""
    short_until = time.time() + args.short_docs_minutes * 60

    def jobs():
        while True:
            top = min(args.docs + 1, 2) if time.time() < short_until else args.docs + 1  # curriculum
            yield (rng.randrange(1 << 30), args.batch, rng.randint(min(args.min_docs, top), top),
                   args.lm_weight, args.extra_questions, args.question_pool, args.question_lm)

    if args.data_workers <= 0:
        for seed, size, docs, lm_weight, extra, pool, question_lm in jobs():
            yield batch_of(make_dataset(size, seed=seed, num_docs=docs), tokenizer, lm_weight, extra, pool,
                           question_lm)
        return
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(args.data_workers, initializer=_init_worker, initargs=(str(tokenizer_dir),)) as workers:
        for arrays in workers.imap(_worker_batch, jobs(), chunksize=1):
            yield Batch(*(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays))
