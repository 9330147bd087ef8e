"""Stored segments are found inside stuffed prompt text."""

import numpy as np
import pytest

from hypic_rag.index.segment_index import SegmentIndex, SegmentRecord
from hypic_rag.prompt_match import SEPARATOR, plan_prompt

TEXTS = ["Document: Kamo\nKamo was born in Tamsk.\n\nKamo likes figs.\n", "Document: Rivo\nRivo is a pilot.\n",
         "Document: Kamo\nKamo was born in Tamsk.\n"]  # a shorter segment with the same first line


@pytest.fixture()
def index(tmp_path):
    idx = SegmentIndex(tmp_path, 4)
    recs = [SegmentRecord(f"s{i}", f"k{i}", f"d{i}", "t", t, (i,)) for i, t in enumerate(TEXTS)]
    idx.add(recs, np.eye(3, 4, dtype=np.float32))
    return idx


def test_exact_text_match_in_a_stuffed_prompt(index):
    prompt = "Use the context.\n" + TEXTS[0] + "\n" + TEXTS[1] + "\nQuestion: where?\nAnswer:"
    plan = plan_prompt(prompt, index)
    assert plan.matched_ids == ["s0", "s1"]  # the longest candidate wins over s2
    assert plan.pieces[0].record is None and plan.pieces[0].text == "Use the context.\n"
    assert plan.question == "\nQuestion: where?\nAnswer:"


def test_separator_prompt(index):
    prompt = TEXTS[1] + SEPARATOR + "unknown text" + SEPARATOR + "Question: q"
    plan = plan_prompt(prompt, index)
    assert [p.record.segment_id if p.record else None for p in plan.pieces] == ["s1", None]
    assert plan.question == "Question: q"


def test_no_match_means_everything_before_is_uncached_context(index):
    plan = plan_prompt("just a question", index)
    assert plan.pieces == [] and plan.question == "just a question"


def test_prompt_ending_in_a_segment_asks_about_it(index):
    plan = plan_prompt("intro\n" + TEXTS[1], index)
    assert plan.matched_ids == [] and plan.question.startswith("Document: Rivo")
    with pytest.raises(ValueError, match="non-empty"):
        plan_prompt("  ", index)
