"""hypic_rag.training: what each training sequence is trained on, the learning-rate schedule,
and a real (tiny, seconds-long) run from scratch."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hypic_rag.data.synthetic import make_dataset
from hypic_rag.training.data import encode
from hypic_rag.training.train import learning_rate

ROOT = Path(__file__).resolve().parents[1]


def test_question_lm_trains_the_extra_questions_as_text_and_leaves_answers_and_ids_alone(tokenizer):
    record = make_dataset(1, seed=3, num_docs=2)[0]
    a = encode(record, tokenizer, extra_questions=4, pool="all")
    b = encode(record, tokenizer, extra_questions=4, pool="all", question_lm=True)
    ids, plain, ids_q, with_q = a.ids, a.weights, b.ids, b.weights
    assert ids == ids_q and len(plain) == len(with_q) == len(ids)
    changed = [i for i, (a, b) in enumerate(zip(plain, with_q)) if a != b]
    assert changed, "question_lm changed no weight"
    assert all(plain[i] == 0.0 and with_q[i] == 1.0 for i in changed)
    text = tokenizer.decode([ids[i] for i in changed])
    assert text.count("Question: What is the") == 4  # exactly the four extra questions
    for qa in record["all_qa"]:
        assert qa["answer"] not in text or qa["question"] in text  # answers stay answers (weight -1)
    assert sum(w < 0 for w in plain) == sum(w < 0 for w in with_q)


def test_learning_rate_warms_up_then_follows_a_cosine_to_a_tenth():
    assert learning_rate(1.0, 0, now=0, start=0, end=100) == 0.0
    assert learning_rate(1.0, 50, now=0, start=0, end=100) == pytest.approx(0.5)
    assert learning_rate(1.0, 500, now=0, start=0, end=100) == pytest.approx(1.0)
    assert learning_rate(1.0, 500, now=50, start=0, end=100) == pytest.approx(0.55)
    assert learning_rate(1.0, 500, now=100, start=0, end=100) == pytest.approx(0.1)
    assert learning_rate(1.0, 500, now=400, start=0, end=100) == pytest.approx(0.1)
    # the cosine runs over start..end, wherever start lies
    assert learning_rate(2.0, 500, now=60, start=60, end=100) == pytest.approx(2.0)


def _train(tmp_path, *flags):
    return subprocess.run([sys.executable, "-m", "hypic_rag.training", "--out", str(tmp_path / "m"),
                           *flags], capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_a_short_fresh_run_saves_a_checkpoint_that_loads_with_its_log(tmp_path):
    run = _train(tmp_path, "--minutes", "0.15", "--hidden", "32", "--layers", "4", "--vocab", "300", "--batch", "2",
                 "--docs", "2", "--eval-questions", "2", "--copy-init", "2", "--attention-gain", "0.5",
                 "--lm-weight", "0.3", "--question-lm", "--threads", "1")
    assert run.returncode == 0, run.stderr[-3000:]
    stage = json.loads((tmp_path / "m" / "training_log.json").read_text())["stages"][-1]
    assert stage["init"] is None and stage["steps"] >= 1 and stage["args"]["question_lm"] is True
    assert stage["log"][-1]["questions"] == 2

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert model.config.hidden_size == 32 and model.config.layer_types.count("full_attention") == 1
    assert len(AutoTokenizer.from_pretrained(tmp_path / "m")) == model.config.vocab_size


def test_attention_starts_without_a_reset_are_refused_for_a_checkpoint(tmp_path):
    run = _train(tmp_path, "--init", str(ROOT / "hypic_rag" / "assets" / "small_model"), "--copy-init", "2")
    assert run.returncode == 2 and "add --reset-attention" in run.stderr


def test_a_two_hop_supervised_block_attention_run_logs_both_hops_losses(tmp_path):
    run = _train(tmp_path, "--minutes", "0.1", "--hidden", "32", "--layers", "8", "--vocab", "300", "--batch", "4",
                 "--docs", "2", "--min-docs", "2", "--eval-questions", "2", "--save-every", "1", "--threads", "1",
                 "--attention-supervision", "1", "--supervised-layer", "7", "--copy-supervision", "1",
                 "--two-hop-supervision", "1", "--two-hop-fraction", "1.0", "--extra-questions", "4",
                 "--question-pool", "all", "--block-attention", "0.5")
    assert run.returncode == 0, run.stderr[-3000:]
    stage = json.loads((tmp_path / "m" / "training_log.json").read_text())["stages"][-1]
    assert stage["args"]["two_hop_supervision"] == 1.0 and stage["args"]["first_hop_layer"] is None
    assert stage["args"]["block_attention"] == 0.5
    first = stage["log"][0]
    assert first["first_hop_pointing_loss"] > 0 and first["first_hop_copying_loss"] > 0 and first["pointing_loss"] > 0


@pytest.mark.parametrize("flags, message", [
    (["--two-hop-supervision", "1"], "give that weight too"),
    (["--attention-supervision", "1", "--first-hop-layer", "3"], "--two-hop-supervision trains"),
    (["--attention-supervision", "1", "--two-hop-fraction", "1.5"], "between 0 and 1"),
    (["--block-attention", "-0.5"], "between 0 and 1"),
    (["--attention-supervision", "1", "--supervised-layer", "3", "--two-hop-supervision", "1"], "need two layers"),
])
def test_two_hop_flags_that_cannot_work_are_refused(tmp_path, flags, message):
    run = _train(tmp_path, "--minutes", "0.05", "--hidden", "32", "--layers", "8", "--vocab", "300", "--threads", "1",
                 *flags)
    assert run.returncode == 2 and message in run.stderr, run.stderr[-2000:]
