"""Synthetic multi-document QA in the common RAG record format.

Records: {"question": str, "ctxs": [{"title": str, "text": str}], "answers": [str], "hops": 1|2}.
Every document describes one invented person in several paragraphs; distractor documents describe
other people with the same kinds of facts. Single-hop questions ask one fact of one person;
two-hop questions go through the person's mentor, whose document holds the answer.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from hypic_rag.errors import RequestError

_SYLLABLES = ("ka ri to ve la mo zu ne shi ra po li ta ge da bo ru fe mi sa no ki lu ze ha vo ni ju ce ro "
              "mar tel dor vin sol bri kan fal gor lem").split()
CITIES = ("Ostrava Velmora Karden Lisport Tamsk Quendal Rivona Marrow Eskel Doloth Brena Fenwick Sarvo Iltheim "
          "Coravel Nimbra Yarrow Halcyra Pellis Vostok").split()
COLORS = "red blue green amber violet silver golden crimson teal ochre indigo ivory".split()
JOBS = ("baker pilot sculptor chemist weaver archivist surveyor glassblower cartographer beekeeper "
        "luthier astronomer").split()
FOODS = "plums lentils figs chestnuts oysters barley saffron quinces walnuts apricots".split()

FACTS = {
    "city": ("The home city of {n} is {v}.", "What is the home city of {n}?"),
    "job": ("The job of {n} is {v}.", "What is the job of {n}?"),
    "color": ("The favorite color of {n} is {v}.", "What is the favorite color of {n}?"),
    "food": ("The favorite food of {n} is {v}.", "What is the favorite food of {n}?"),
}
_VALUES = {"city": CITIES, "job": JOBS, "color": COLORS, "food": FOODS}
_FILLER = (
    "{n} spends quiet mornings reading old letters.",
    "Friends say that {n} is patient and kind.",
    "Every winter {n} travels to the coast.",
    "{n} once wrote a short book about rivers.",
    "In the evenings {n} plays chess with neighbors.",
    "{n} keeps a small garden behind the house.",
)


# long documents (paragraphs > 0): more about the person, and sentences about other invented people
# that carry values of every kind (a city, a job, a color, a food) without stating any asked fact
_MORE_FILLER = (
    "On market days {n} walks to the square before noon.",
    "{n} likes long walks along the river after rain.",
    "A small dog follows {n} around the garden.",
    "Most letters that {n} writes are short and warm.",
    "{n} mends old chairs for the neighbors.",
    "Each summer {n} paints the fence behind the house.",
    "{n} keeps a diary of the weather.",
    "Visitors often find {n} reading by the window.",
)
_DISTRACTORS = (
    "{m}, a {job} from {city}, visits {n} every spring.",
    "{n} once shared a meal of {food} with {m}.",
    "The {color} door of the house of {m} faces the river.",
    "{m} moved to {city} to work as a {job}.",
    "Neighbors say {m} grows {food} in a {color} pot.",
    "{m} and {n} met long ago on a road near {city}.",
)


def _distractor(person: "Person", other: str, rng: random.Random) -> str:
    values = {k: rng.choice(v) for k, v in _VALUES.items()}
    return rng.choice(_DISTRACTORS).format(n=person.name, m=other, **values)


def _long_document(person: "Person", rng: random.Random, paragraphs: int, taken: set[str]) -> dict:
    """The person's facts (and mentor) scattered over `paragraphs` paragraphs of three to six
    sentences: their own routine, and distractors about other invented people. Every third paragraph
    is about one of those others only."""
    facts = [FACTS[k][0].format(n=person.name, v=v) for k, v in person.facts.items()]
    if person.mentor:
        facts.append(f"The mentor of {person.name} is {person.mentor}.")
    others = [_name(rng, taken) for _ in range(2)]
    own = [f.format(n=person.name) for f in _FILLER + _MORE_FILLER]
    body = []
    for i in range(paragraphs):
        if i % 3 == 2:
            body.append([_distractor(person, others[i % 2], rng) for _ in range(rng.randint(3, 4))])
        else:
            body.append(rng.sample(own, rng.randint(2, 3)) + [_distractor(person, rng.choice(others), rng)
                                                             for _ in range(rng.randint(1, 2))])
    for fact in facts:
        para = body[rng.choice([i for i in range(paragraphs) if i % 3 != 2])]
        para.insert(rng.randrange(len(para) + 1), fact)
    return {"title": person.name, "text": "\n\n".join(" ".join(p) for p in body)}


@dataclass(frozen=True)
class Person:
    name: str
    facts: dict
    mentor: str | None


def _name(rng: random.Random, taken: set[str]) -> str:
    while True:
        name = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()
        if name not in taken:
            taken.add(name)
            return name


def _document(person: Person, rng: random.Random) -> dict:
    sentences = [FACTS[k][0].format(n=person.name, v=v) for k, v in person.facts.items()]
    if person.mentor:
        sentences.append(f"The mentor of {person.name} is {person.mentor}.")
    sentences += [f.format(n=person.name) for f in rng.sample(_FILLER, 3)]
    rng.shuffle(sentences)
    half = len(sentences) // 2
    return {"title": person.name, "text": " ".join(sentences[:half]) + "\n\n" + " ".join(sentences[half:])}


def make_record(rng: random.Random, num_docs: int = 4, two_hop: bool = False, paragraphs: int = 0) -> dict:
    """One question over num_docs documents; paragraphs > 0 makes each document that many paragraphs
    long, with distractors (_long_document); 0 keeps the two short paragraphs (and the exact draws of
    datasets made before long documents existed)."""
    if paragraphs < 0 or (paragraphs and paragraphs < 2):
        raise RequestError(f"paragraphs is 0 (short documents) or at least 2, got {paragraphs}")
    taken: set[str] = set()
    people = [Person(_name(rng, taken), {k: rng.choice(v) for k, v in _VALUES.items()}, None) for _ in range(num_docs)]
    target = people[0]
    two_hop = two_hop and num_docs >= 2  # the mentor needs a document of their own
    if two_hop:
        mentor = people[1]
        people[0] = Person(target.name, target.facts, mentor.name)
        kind = rng.choice(list(FACTS))
        question = FACTS[kind][1].format(n=f"the mentor of {target.name}")
        answer = mentor.facts[kind]
    else:
        kind = rng.choice(list(FACTS))
        question = FACTS[kind][1].format(n=target.name)
        answer = target.facts[kind]
    # every single-hop fact of every person, except the one the main question asks (training signal;
    # built without drawing from rng so datasets stay identical to those drawn before it existed)
    source = people[1] if two_hop else target
    every = [{"question": FACTS[k][1].format(n=p.name), "answer": p.facts[k]}
             for p in people for k in FACTS if not (p.name == source.name and k == kind)]
    # with a mentor: the mentor's other facts asked through the mentor (training signal, no rng draws)
    via = [{"question": FACTS[k][1].format(n=f"the mentor of {target.name}"), "answer": people[1].facts[k]}
           for k in FACTS if k != kind] if two_hop else []
    docs = [_long_document(p, rng, paragraphs, taken) if paragraphs else _document(p, rng) for p in people]
    rng.shuffle(docs)
    more = []
    for person in rng.sample(people, len(people)):  # further single-hop questions (extra training signal)
        kind = rng.choice(list(FACTS))
        more.append({"question": FACTS[kind][1].format(n=person.name), "answer": person.facts[kind]})
    answered_by = [target.name] + ([people[1].name] if two_hop else [])  # the documents the answer needs
    return {"question": question, "ctxs": docs, "answers": [answer], "hops": 2 if two_hop else 1, "more_qa": more,
            "all_qa": every, "two_hop_qa": via, "answered_by": answered_by}


def make_dataset(n: int, seed: int, num_docs: int = 4, two_hop_fraction: float = 0.25, paragraphs: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [make_record(rng, num_docs, rng.random() < two_hop_fraction, paragraphs) for _ in range(n)]


def load_records(path: str | Path) -> list[dict]:
    """Load a .json list or a .jsonl file of {"question", "ctxs": [{"title","text"}], "answers"} records."""
    path = Path(path)
    if not path.is_file():
        raise RequestError(f"no such dataset file: {path}")
    text = path.read_text(encoding="utf-8")
    records = json.loads(text) if path.suffix == ".json" else [json.loads(l) for l in text.splitlines() if l.strip()]
    for i, r in enumerate(records):
        if not isinstance(r, dict) or not {"question", "ctxs", "answers"} <= r.keys():
            raise RequestError(f"{path} record {i} lacks question/ctxs/answers")
    return records


def context_text(doc: dict) -> str:
    return f"Document: {doc['title']}\n{doc['text']}\n"


def question_text(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def make_corpus(num_records: int, seed: int, num_docs: int = 4, paragraphs: int = 0,
                two_hop_fraction: float = 0.25, keep=None) -> tuple[list[dict], list[dict]]:
    """A flat corpus of uniquely titled documents plus the questions asked of it.

    Returns (documents as {"id", "title", "text"}, questions as {"question", "answers", "hops", "gold"}).
    Records whose names collide with an earlier record are dropped, as are records with a document
    `keep` (a predicate on {"title", "text"}) refuses.
    """
    docs: dict[str, dict] = {}
    questions = []
    for record in make_dataset(num_records, seed, num_docs, two_hop_fraction, paragraphs):
        titles = [c["title"] for c in record["ctxs"]]
        if any(t in docs for t in titles) or (keep is not None and not all(keep(c) for c in record["ctxs"])):
            continue
        for c in record["ctxs"]:
            docs[c["title"]] = {"id": c["title"], "title": c["title"], "text": c["text"]}
        questions.append({"question": record["question"], "answers": record["answers"], "hops": record["hops"],
                          "gold": titles})
    return list(docs.values()), questions
