"""`hypic-rag demo`: the shipped small model answers questions over the shipped corpus, full
recompute and hypic side by side (answers and time to first token)."""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

from rich.console import Console

from hypic_rag.api import SHIPPED_MODEL, HypicRAG
from hypic_rag.data.scoring import exact_match
from hypic_rag.errors import StoreError

DEMO_DIR = Path(__file__).resolve().parents[1] / "assets" / "demo"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def run_demo(store_dir: str | None, num_questions: int) -> int:
    console = Console(width=80)  # reads the same in a terminal and piped into a file
    if not (SHIPPED_MODEL / "config.json").is_file():
        raise StoreError(f"the shipped model is missing at {SHIPPED_MODEL}; reinstall hypic_rag")
    questions = [json.loads(l) for l in (DEMO_DIR / "questions.jsonl").read_text().splitlines() if l.strip()]
    questions = questions[: max(1, num_questions)]
    tmp = None
    if store_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="hypic-demo-")
        store_dir = tmp.name
    console.print(f"[bold]hypic_rag demo[/]: model {SHIPPED_MODEL.name}, store {store_dir}")
    rag = HypicRAG.create(store_dir, model=SHIPPED_MODEL)
    report = rag.ingest([DEMO_DIR / "corpus.jsonl"])
    console.print(f"precomputed {report.entries_computed} segment caches from {report.documents} documents "
                  f"in {report.seconds:.1f}s ({report.entries_reused} reused)")
    for q in questions[:1]:  # warm both paths once so the table compares steady-state runs
        rag.query(q["question"], mode="full_recompute", max_new_tokens=1)
        rag.query(q["question"], max_new_tokens=1)
    console.print(f"[bold]full recompute vs hypic[/], k=4 retrieved segments, {len(questions)} questions")
    full_ttft, hypic_ttft, full_em, hypic_em = [], [], [], []
    for n, q in enumerate(questions, 1):
        full = rag.query(q["question"], k=4, mode="full_recompute", max_new_tokens=8)
        fast = rag.query(q["question"], k=4, max_new_tokens=8)
        full_ttft.append(full.timings.ttft)
        hypic_ttft.append(fast.timings.ttft)
        full_em.append(exact_match(full.answer, q["answers"]))
        hypic_em.append(exact_match(fast.answer, q["answers"]))
        console.print(f"{n:>2}. {_cut(q['question'], 60)}  gold: {_cut(q['answers'][0], 12)}", highlight=False)
        for label, result, ok in (("full", full, full_em[-1]), ("hypic", fast, hypic_em[-1])):
            speed = f"  {full.timings.ttft / fast.timings.ttft:.2f}x faster" if label == "hypic" else ""
            console.print(f"    {label:<6}{_cut(result.answer or '-', 28):<30}{'ok ' if ok else 'no '}"
                          f"{result.timings.ttft * 1000:>8.1f} ms{speed}", highlight=False)
    full_median, hypic_median = statistics.median(full_ttft), statistics.median(hypic_ttft)
    console.print(f"exact match: full {sum(full_em):.0f}/{len(questions)}, hypic {sum(hypic_em):.0f}/{len(questions)}")
    console.print(f"median TTFT ({full_median / hypic_median:.2f}x):", highlight=False)
    for label, value in (("full", full_median), ("hypic", hypic_median)):
        bar = "#" * max(1, round(40 * value / max(full_median, hypic_median)))
        console.print(f"  {label:<6}{bar:<41}{value * 1000:>8.1f} ms", highlight=False)
    rag.close()
    if tmp is not None:
        tmp.cleanup()
    return 0
