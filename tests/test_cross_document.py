"""bench/cross_document.py reads what it says: decay gates forced shut leave nothing of the earlier
state, gates held open keep it, and attention weights are shares of one."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from hypic_rag.data.synthetic import make_dataset
from hypic_rag.training.model_init import build_model

ROOT = Path(__file__).resolve().parents[1]


def _bench_script(name: str):
    """A bench/ script imported as a module from its file (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


measure = _bench_script("cross_document").measure


@pytest.mark.parametrize("a_log, expect", [(6.0, 0.0), (-30.0, 1.0)])
def test_linear_state_survival_follows_the_decay_gates(tmp_path, tokenizer, a_log, expect):
    torch.manual_seed(0)
    model = build_model(tokenizer, hidden=32, layers=4)
    with torch.no_grad():
        for layer in model.model.layers:
            if getattr(layer, "linear_attn", None) is not None:
                layer.linear_attn.A_log.fill_(a_log)  # g = -exp(A_log) * softplus(.): shut at 6, open at -30
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    row = measure(str(tmp_path), make_dataset(2, seed=1, num_docs=3))
    survive = row["linear_state_surviving"]
    assert row["window"] == 16
    assert set(survive) == {0, 1, 2}
    assert all(v == pytest.approx(expect, abs=1e-6) for v in survive.values())
    weight = row["attention_weight_on_earlier_documents"]
    assert set(weight) == {3} and 0.0 < weight[3] < 1.0  # a random layer reads some of the earlier documents


def test_a_folder_that_is_not_a_checkpoint_is_refused(tmp_path):
    import subprocess

    run = subprocess.run([sys.executable, str(ROOT / "bench" / "cross_document.py"), str(tmp_path), "--out",
                          str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 2 and "not a checkpoint folder" in run.stderr
    assert not (tmp_path / "out").exists()  # nothing written
