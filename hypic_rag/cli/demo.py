"""`hypic-rag demo`: the shipped small model answers questions over a corpus of realistic retrieval
sizes (documents of 400-500 tokens, k = 8 retrieved segments, about 3.6k prompt tokens), full
recompute and hypic side by side: answers, exact match, time to first token per question and the
median ratio, with a bar per mode. Every line fits 80 columns, in a terminal or piped to a file."""

from __future__ import annotations

import json
import statistics
import tempfile

import torch
from rich.console import Console

from hypic_rag.api import SHIPPED_MODEL, HypicRAG
from hypic_rag.data.demo_corpus import CORPUS_FILE, DEMO_DIR, QUESTIONS_FILE
from hypic_rag.data.scoring import exact_match
from hypic_rag.errors import RequestError, StoreError

WIDTH = 80
K = 8


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RequestError("--device cuda needs a CUDA GPU and a CUDA build of torch; none is present here "
                           "(use --device cpu or auto)")
    return name


def _read(name: str) -> list[dict]:
    return [json.loads(l) for l in (DEMO_DIR / name).read_text().splitlines() if l.strip()]


def _bar(value: float, top: float) -> str:
    return "#" * max(1, round(44 * value / top))


def run_demo(store_dir: str | None, num_questions: int, device: str = "auto") -> int:
    console = Console(width=WIDTH, highlight=False)  # reads the same in a terminal and piped into a file
    if not (SHIPPED_MODEL / "config.json").is_file():
        raise StoreError(f"the shipped model is missing at {SHIPPED_MODEL}; reinstall hypic_rag")
    device = _device(device)
    questions = _read(QUESTIONS_FILE)[: max(1, num_questions)]
    tmp = None
    if store_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="hypic-demo-")
        store_dir = tmp.name
    console.print(f"[bold]hypic_rag demo[/]: shipped model ({SHIPPED_MODEL.name}) on {device}")
    console.print(f"store: {_cut(str(store_dir), WIDTH - 7)}")
    with HypicRAG.create(store_dir, model=SHIPPED_MODEL, device=device) as rag:
        report = rag.ingest([DEMO_DIR / CORPUS_FILE])
        ids = {d["id"] for d in _read(CORPUS_FILE)}  # one segment per document, tokenised at ingest
        sizes = [len(r.token_ids) for r in rag.index.records() if r.doc_id in ids]
        console.print(f"corpus: {report.documents} documents of {min(sizes)}-{max(sizes)} tokens, "
                      f"{report.entries_computed} segment caches precomputed in {report.seconds:.1f} s")
        for q in questions[:1]:  # warm both paths once so the table compares steady-state runs
            rag.query(q["question"], k=K, mode="full_recompute", max_new_tokens=1)
            rag.query(q["question"], k=K, max_new_tokens=1)
        console.print(f"\n[bold]full recompute vs hypic[/]: {len(questions)} questions, k={K} retrieved segments "
                      "each\n")
        full_ttft, hypic_ttft, full_em, hypic_em, prompts = [], [], [], [], []
        for n, q in enumerate(questions, 1):
            full = rag.query(q["question"], k=K, mode="full_recompute", max_new_tokens=8)
            fast = rag.query(q["question"], k=K, max_new_tokens=8)
            full_ttft.append(full.timings.ttft)
            hypic_ttft.append(fast.timings.ttft)
            full_em.append(exact_match(full.answer, q["answers"]))
            hypic_em.append(exact_match(fast.answer, q["answers"]))
            prompts.append(fast.generation.prompt_tokens)
            g = fast.generation
            console.print(f"{n:>2}. {_cut(q['question'], 48):<48} gold: {_cut(q['answers'][0], 18)}")
            console.print(f"    {g.prompt_tokens} prompt tokens, {g.cached_tokens} from {g.segment_hits} "
                          f"cached segments")
            for label, result, ok in (("full", full, full_em[-1]), ("hypic", fast, hypic_em[-1])):
                speed = f"{full.timings.ttft / fast.timings.ttft:>7.1f}x" if label == "hypic" else ""
                console.print(f"    {label:<6} {_cut(result.answer or '-', 26):<26} {'ok' if ok else 'no':<3}"
                              f"{result.timings.ttft * 1000:>9.1f} ms{speed}")
        full_median, hypic_median = statistics.median(full_ttft), statistics.median(hypic_ttft)
        console.print(f"\nexact match: full recompute {sum(full_em):.0f}/{len(questions)}, "
                      f"hypic {sum(hypic_em):.0f}/{len(questions)}")
        console.print(f"median TTFT over {len(questions)} questions of ~{statistics.median(prompts):.0f} "
                      f"prompt tokens: hypic {full_median / hypic_median:.1f}x faster")
        top = max(full_median, hypic_median)
        for label, value in (("full", full_median), ("hypic", hypic_median)):
            console.print(f"  {label:<6}{_bar(value, top):<45}{value * 1000:>9.1f} ms")
    if tmp is not None:
        tmp.cleanup()
    return 0
