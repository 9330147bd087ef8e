"""Write and execute examples/quickstart.ipynb (outputs kept). Rerun after changing the shipped model.

    python examples/build_notebook.py
"""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

CELLS = [
    ("md", "# hypic_rag quickstart\n\nIngest a corpus into a segment store, query it, and compare time to "
           "first token of full recompute with hypic's cached composition. Everything runs on the CPU with "
           "the small hybrid model hypic_rag ships."),
    ("code", "import tempfile\nfrom hypic_rag.api import HypicRAG, SHIPPED_MODEL\nfrom hypic_rag.cli.demo import DEMO_DIR\n\n"
             "rag = HypicRAG.create(tempfile.mkdtemp(prefix='hypic-nb-'), model=SHIPPED_MODEL)\n"
             "report = rag.ingest([DEMO_DIR / 'corpus.jsonl'])\n"
             "print(f'{report.documents} documents -> {report.entries_computed} cached segments in {report.seconds:.1f}s')"),
    ("md", "## Query\nRetrieval picks the top-k segments; their cached states are composed, the seams recomputed, "
           "and only the question is prefilled."),
    ("code", "import json\nquestions = [json.loads(l) for l in (DEMO_DIR / 'questions.jsonl').read_text().splitlines()][:8]\n"
             "q = questions[0]\nresult = rag.query(q['question'], k=4, max_new_tokens=8)\n"
             "print('question:', q['question'])\nprint('answer:  ', result.answer, '| gold:', q['answers'][0])\n"
             "print('segments:', result.segment_ids)\nt = result.timings\n"
             "print(f'TTFT {t.ttft*1000:.1f} ms = load {t.load*1000:.1f} + compose {t.compose*1000:.1f} + '\n"
             "      f'seam {t.seam*1000:.1f} + prefill {t.prefill*1000:.1f} (+ retrieval {result.retrieval_seconds*1000:.1f})')\n"
             "print('tier hits:', result.tier_hits)"),
    ("md", "## Full recompute vs hypic\nThe same retrieved segments answered both ways."),
    ("code", "import statistics\nimport matplotlib.pyplot as plt\n\nrows = []\nfor q in questions:\n"
             "    full = rag.query(q['question'], k=4, mode='full_recompute', max_new_tokens=8)\n"
             "    fast = rag.query(q['question'], k=4, max_new_tokens=8)\n"
             "    rows.append((full.timings.ttft * 1000, fast.timings.ttft * 1000, full.answer, fast.answer, q['answers'][0]))\n"
             "for f, h, fa, ha, gold in rows:\n    print(f'{f:7.1f} ms  {h:7.1f} ms   full={fa!r:14} hypic={ha!r:14} gold={gold!r}')\n"
             "print(f'median TTFT: full {statistics.median(r[0] for r in rows):.1f} ms, hypic {statistics.median(r[1] for r in rows):.1f} ms')\n"
             "fig, ax = plt.subplots(figsize=(7, 3.5))\nx = range(len(rows))\n"
             "ax.bar([i - 0.2 for i in x], [r[0] for r in rows], width=0.4, label='full recompute')\n"
             "ax.bar([i + 0.2 for i in x], [r[1] for r in rows], width=0.4, label='hypic')\n"
             "ax.set_xlabel('question'); ax.set_ylabel('TTFT (ms)'); ax.legend(); plt.show()"),
    ("md", "## Streaming"),
    ("code", "for piece in rag.stream(questions[1]['question'], k=4, max_new_tokens=8):\n"
             "    print(piece if isinstance(piece, str) else f'\\n[{piece.timings.ttft*1000:.1f} ms to first token]', end='')\n"
             "rag.close()"),
]


def build(path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src)
                for kind, src in CELLS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    nbformat.write(nb, path)


if __name__ == "__main__":
    build(Path(__file__).resolve().parent / "quickstart.ipynb")
