"""`hypic-rag demo`: the shipped small model answers questions over the shipped corpus, full
recompute and hypic side by side (answers and time to first token)."""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from hypic_rag.api import SHIPPED_MODEL, HypicRAG
from hypic_rag.data.scoring import exact_match
from hypic_rag.errors import StoreError

DEMO_DIR = Path(__file__).resolve().parents[1] / "assets" / "demo"


def run_demo(store_dir: str | None, num_questions: int) -> int:
    console = Console()
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
    table = Table(title="full recompute vs hypic (k=4 retrieved segments)")
    for col in ("question", "gold", "full answer", "full TTFT ms", "hypic answer", "hypic TTFT ms", "speedup"):
        table.add_column(col)
    full_ttft, hypic_ttft, full_em, hypic_em = [], [], [], []
    for q in questions:
        full = rag.query(q["question"], k=4, mode="full_recompute", max_new_tokens=8)
        fast = rag.query(q["question"], k=4, max_new_tokens=8)
        full_ttft.append(full.timings.ttft)
        hypic_ttft.append(fast.timings.ttft)
        full_em.append(exact_match(full.answer, q["answers"]))
        hypic_em.append(exact_match(fast.answer, q["answers"]))
        table.add_row(q["question"], q["answers"][0], full.answer, f"{full.timings.ttft * 1000:.1f}", fast.answer,
                      f"{fast.timings.ttft * 1000:.1f}", f"{full.timings.ttft / fast.timings.ttft:.2f}x")
    console.print(table)
    console.print(
        f"exact match: full {sum(full_em):.0f}/{len(questions)}, hypic {sum(hypic_em):.0f}/{len(questions)}; "
        f"median TTFT full {statistics.median(full_ttft) * 1000:.1f} ms, hypic {statistics.median(hypic_ttft) * 1000:.1f} ms "
        f"({statistics.median(full_ttft) / statistics.median(hypic_ttft):.2f}x)"
    )
    rag.close()
    if tmp is not None:
        tmp.cleanup()
    return 0
