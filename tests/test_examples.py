"""The examples run as a user runs them, on the shipped model."""

import subprocess
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_script(name):
    out = subprocess.run([sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def _home_city(name: str) -> str:
    from conftest import demo_docs

    text = next(d["text"] for d in demo_docs() if d["title"] == name)
    return text.split(f"home city of {name} is ")[1].split(".")[0]


def test_langchain_lcel_example():
    out = run_script("langchain_lcel_rag.py")
    assert out.count("cached segments [") == 2 and "streamed:" in out
    name = out.split("What is the home city of ")[1].split("?")[0]
    assert out.split("\nA: ")[1].splitlines()[0].strip() == _home_city(name), out


def test_llama_index_example():
    out = run_script("llama_index_query.py")
    ids_answer = out.split("A (segment ids passed): ")[1].splitlines()[0].strip()
    stock_answer = out.split("A (stock RetrieverQueryEngine, text stuffed): ")[1].splitlines()[0].strip("'\" ")
    name = out.split("What is the home city of ")[1].split("?")[0]
    assert ids_answer == stock_answer == _home_city(name), out


def test_notebook_executes_and_keeps_outputs(tmp_path):
    nb = nbformat.read(EXAMPLES / "quickstart.ipynb", as_version=4)
    assert all(c.outputs for c in nb.cells if c.cell_type == "code"), "the committed notebook keeps its outputs"
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
               for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert "median TTFT" in "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def test_demo_command_runs():
    out = subprocess.run([sys.executable, "-m", "hypic_rag.cli.main", "demo", "--questions", "2"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "full recompute vs hypic" in out.stdout and "median TTFT" in out.stdout
    assert all(len(line) <= 80 for line in out.stdout.splitlines()), out.stdout  # piped: 80 columns, no wrapping
    assert "k=8 retrieved segments" in out.stdout and out.stdout.count(" from 8 cached segments") == 2, out.stdout
    bars = [l for l in out.stdout.splitlines() if l.lstrip().startswith(("full  #", "hypic #"))]
    assert len(bars) == 2 and bars[0].count("#") > bars[1].count("#"), out.stdout  # hypic's bar is the shorter


def test_demo_refuses_cuda_where_there_is_none():
    import torch

    if torch.cuda.is_available():
        return
    out = subprocess.run([sys.executable, "-m", "hypic_rag.cli.main", "demo", "--device", "cuda"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "--device cuda needs a CUDA GPU" in out.stdout + out.stderr
