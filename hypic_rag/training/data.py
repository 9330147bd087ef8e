"""What the small model of hypic_rag.training is trained on: synthetic records laid out as token
sequences (each document tokenized alone, as segments are at query time), per-token loss weights, and
for attention supervision where each answer's value sits in the documents (and, for two-hop questions,
where the mentor's name sits).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from hypic_rag.data.synthetic import FACTS, context_text, make_dataset, question_text


@dataclass(frozen=True)
class Encoded:
    """One training sequence. weights: 1 for text trained as text (later scaled by the lm weight), 0 for
    untrained text, -1 for answer tokens. pointers: (query, value) positions, one per single-hop answer
    whose value is found in a document: the token after which the answer is predicted, and the
    document token where that answer's value starts. With two-hop pointers (encode's two_hop) a two-hop
    answer has one there too, at the mentor's value, and one in hop_pointers: from the same query to the
    last token of the mentor's name in the asked person's `The mentor of N is M.` doc_of: each token's
    document number (1, 2, ...), 0 for the bos, questions and answers (block_attention.py)."""

    ids: list[int]
    weights: list[float]
    pointers: list[tuple[int, int]]
    hop_pointers: list[tuple[int, int]] = field(default_factory=list)
    doc_of: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class TwoHop:
    """How a `... of the mentor of N?` question is answered: the asked person's document, the character
    offset in its context_text just past the mentor's name, and the single-hop question to the mentor."""

    title: str
    name_end: int
    question: str


def _text_start(title: str) -> int:
    """Where a document's text starts in its context_text (after "Document: N\n")."""
    return len(context_text({"title": title, "text": ""})) - 1


def two_hop_route(docs: list[dict], question: str) -> TwoHop | None:
    """The route through the mentor for a two-hop question whose asked person's document is in docs,
    and says who the mentor is; None for any other question."""
    for _, asked in FACTS.values():
        head, tail = asked.split("{n}")
        head += "the mentor of "
        if not (question.startswith(head) and question.endswith(tail)):
            continue
        name = question[len(head): len(question) - len(tail)]
        for doc in docs:
            said = f"The mentor of {name} is "
            at = doc["text"].find(said) if doc["title"] == name else -1
            if at >= 0:
                mentor = doc["text"][at + len(said): doc["text"].index(".", at)]
                offset = _text_start(name) + at + len(said) + len(mentor)
                return TwoHop(name, offset, asked.format(n=mentor))
    return None


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
            return _text_start(title) + at + len(sentence) - 1 - len(answer)
    return None


def encode(record: dict, tokenizer, extra_questions: int = 0, pool: str = "sampled",
           question_lm: bool = False, two_hop: bool = False) -> Encoded:
    """bos + each document tokenized alone + question + answer + eos (+ extra question/answer pairs,
    each after the previous answer's eos).

    pool "sampled" takes the extra pairs from record["more_qa"] (one random fact per person); "all"
    from record["all_qa"] (every fact of every person but the one already asked; extra_pairs). The extra
    questions' own tokens are trained as text (weight 1, scaled by the lm weight) when question_lm is
    set, else not at all: continuing a person's name in a question means finding that person's
    document, the lookup an answer needs too. two_hop adds the pointers of two-hop answers (Encoded) and
    asks a two-hop record's further questions through the mentor too (extra_pairs)."""
    ids, weights, doc_of = [tokenizer.bos_token_id], [0.0], [0]
    docs = []  # (doc, first position, character offsets of its tokens)
    for number, doc in enumerate(record["ctxs"], start=1):
        piece = tokenizer(context_text(doc), add_special_tokens=False, return_offsets_mapping=True)
        docs.append((doc, len(ids), piece["offset_mapping"]))
        ids += piece["input_ids"]
        weights += [1.0] * len(piece["input_ids"])
        doc_of += [number] * len(piece["input_ids"])
    pointers, hop_pointers = [], []

    def token_at(first: int, offsets, at: int) -> int:
        return first + next(i for i, (_, end) in enumerate(offsets) if end > at)

    def answer(question: str, value: str, prefix: str, text_weight: float) -> None:
        q = tokenizer.encode(prefix + question_text(question), add_special_tokens=False)
        a = tokenizer.encode(" " + value, add_special_tokens=False) + [tokenizer.eos_token_id]
        ids.extend(q)
        weights.extend([text_weight] * len(q))
        query = len(ids) - 1
        route = two_hop_route([d for d, _, _ in docs], question) if two_hop else None
        for doc, first, offsets in docs:
            at = value_offset(doc, route.question if route else question, value)
            if at is not None:
                pointers.append((query, token_at(first, offsets, at)))
                break
        for doc, first, offsets in docs if route else ():
            if doc["title"] == route.title:
                hop_pointers.append((query, token_at(first, offsets, route.name_end - 1)))
        ids.extend(a)
        weights.extend([-1.0] * len(a))  # marks answer tokens

    answer(record["question"], record["answers"][0], "", 1.0)
    for qa in extra_pairs(record, extra_questions, pool, two_hop):
        answer(qa["question"], qa["answer"], "\n", float(question_lm))
    return Encoded(ids, weights, pointers, hop_pointers, doc_of + [0] * (len(ids) - len(doc_of)))


def extra_pairs(record: dict, count: int, pool: str = "sampled", two_hop: bool = False) -> list[dict]:
    """The further {"question", "answer"} pairs a training sequence asks after the record's own
    question: from record["more_qa"], or with pool "all" from record["all_qa"] in a fixed shuffle.
    With two_hop, a two-hop record's record["two_hop_qa"] (the mentor's other facts, asked through the
    mentor) are among them, all of them within count, in a shuffle with the rest."""
    extra = record.get("more_qa", [])
    if pool == "all":
        extra = list(record.get("all_qa", []))
        random.Random(record["question"] + record["ctxs"][0]["title"]).shuffle(extra)
    if not two_hop:
        return extra[:count]
    via = list(record.get("two_hop_qa", []))[:count]
    chosen = via + extra[: count - len(via)]
    random.Random(record["question"]).shuffle(chosen)
    return chosen


def prompt_and_answer(record: dict, tokenizer) -> tuple[list[int], list[int]]:
    """The ids the model reads (bos, documents, question) and the ids of the first answer plus eos."""
    ids = encode(record, tokenizer).ids
    answer_len = len(tokenizer.encode(" " + record["answers"][0], add_special_tokens=False)) + 1
    return ids[:-answer_len], ids[-answer_len:]


@dataclass(frozen=True)
class Batch:
    """Right-padded ids, loss weights (answers 1, text the lm weight, padding 0) and pointer rows
    (sequence, query position, value position) of Encoded's pointers and hop_pointers; doc_of as in Encoded
    (0 on padding)."""

    ids: torch.Tensor
    weights: torch.Tensor
    pointers: torch.Tensor
    hop_pointers: torch.Tensor
    doc_of: torch.Tensor

    def to(self, device) -> "Batch":
        return Batch(*(t.to(device, non_blocking=True)
                       for t in (self.ids, self.weights, self.pointers, self.hop_pointers, self.doc_of)))


def _pointer_rows(encoded: list[Encoded], name: str) -> torch.Tensor:
    return torch.tensor([(row, q, v) for row, e in enumerate(encoded) for q, v in getattr(e, name)],
                        dtype=torch.long).view(-1, 3)


def batch_of(records, tokenizer, lm_weight: float, extra_questions: int = 0, pool: str = "sampled",
             question_lm: bool = False, two_hop: bool = False) -> Batch:
    encoded = [encode(r, tokenizer, extra_questions, pool, question_lm, two_hop) for r in records]
    width = max(len(e.ids) for e in encoded)
    ids = torch.full((len(encoded), width), tokenizer.pad_token_id)
    w = torch.zeros(len(encoded), width)
    doc_of = torch.zeros(len(encoded), width, dtype=torch.long)
    for row, e in enumerate(encoded):
        ids[row, : len(e.ids)] = torch.tensor(e.ids)
        w[row, : len(e.weights)] = torch.tensor([1.0 if x < 0 else x * lm_weight for x in e.weights])
        doc_of[row, : len(e.doc_of)] = torch.tensor(e.doc_of)
    return Batch(ids, w, _pointer_rows(encoded, "pointers"), _pointer_rows(encoded, "hop_pointers"), doc_of)


_WORKER_TOKENIZER = None


def _init_worker(tokenizer_dir: str) -> None:
    global _WORKER_TOKENIZER
    from transformers import AutoTokenizer

    torch.set_num_threads(1)
    _WORKER_TOKENIZER = AutoTokenizer.from_pretrained(tokenizer_dir)


def _batch_for(job: tuple, tokenizer) -> Batch:
    seed, size, num_docs, two_hop_fraction, lm_weight, extra, pool, question_lm, two_hop, paragraphs = job
    return batch_of(make_dataset(size, seed=seed, num_docs=num_docs, two_hop_fraction=two_hop_fraction,
                                 paragraphs=paragraphs), tokenizer, lm_weight, extra, pool, question_lm, two_hop)


def _worker_batch(job: tuple):
    b = _batch_for(job, _WORKER_TOKENIZER)
    # numpy, as torch's fd-passing runs out of handles
    return b.ids.numpy(), b.weights.numpy(), b.pointers.numpy(), b.hop_pointers.numpy(), b.doc_of.numpy()


def batches(args, tokenizer, tokenizer_dir, rng: random.Random):
    """Endless Batches; built in worker processes when args.data_workers > 0."""
    short_until = time.time() + args.short_docs_minutes * 60

    def jobs():
        while True:
            top = min(args.docs + 1, 2) if time.time() < short_until else args.docs + 1  # curriculum
            seed = rng.randrange(1 << 30)  # draws in the order of runs made before long documents existed
            docs = rng.randint(min(args.min_docs, top), top)
            long_docs = args.paragraphs >= 2 and rng.random() < args.long_share
            paragraphs = rng.randint(2, args.paragraphs) if long_docs else 0
            if long_docs:  # documents of `paragraphs` paragraphs: at most args.docs of them
                docs = min(docs, args.docs)
            yield (seed, args.long_batch if long_docs else args.batch, docs,
                   args.two_hop_fraction, args.lm_weight, args.extra_questions, args.question_pool, args.question_lm,
                   args.two_hop_supervision > 0, paragraphs)

    if args.data_workers <= 0:
        for job in jobs():
            yield _batch_for(job, tokenizer)
        return
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(args.data_workers, initializer=_init_worker, initargs=(str(tokenizer_dir),)) as workers:
        for arrays in workers.imap(_worker_batch, jobs(), chunksize=1):
            yield Batch(*(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays))
