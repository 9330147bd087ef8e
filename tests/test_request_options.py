"""Per-request options: the rung and the decoding settings travel with each call, and stop strings
end decoding (not just the text)."""

import pytest

from conftest import demo_rag
from hypic_rag import ExecutorConfig, HypicExecutor
from hypic_rag.config import RequestOptions
from hypic_rag.errors import RequestError
from hypic_rag.executor.text_stream import TextStream

QUESTION = "What is the home city of Kamo Sanders?"


def test_text_stream_holds_back_a_possible_stop_string_and_cuts_before_it(tokenizer):
    ids = tokenizer.encode("The home city is Lisbon. Next question", add_special_tokens=False)
    stream = TextStream(tokenizer, stop=("Lisbon. N",))
    released = "".join(stream.push(t) for t in ids)
    assert stream.stopped and released == stream.text == "The home city is "
    plain = TextStream(tokenizer, stop=("never there",))
    out = "".join(plain.push(t) for t in ids) + plain.finish()
    assert not plain.stopped and out == plain.text == tokenizer.decode(ids)


def test_text_stream_never_releases_half_a_character(tokenizer):
    ids = tokenizer.encode("café 東京", add_special_tokens=False)
    stream = TextStream(tokenizer)
    pieces = [stream.push(t) for t in ids] + [stream.finish()]
    assert all("\ufffd" not in p for p in pieces) and "".join(pieces) == "café 東京"


def test_a_stop_string_stops_decoding_and_the_answer_ends_before_it():
    rag = demo_rag()
    long = rag.query(QUESTION, k=3, options=RequestOptions(max_new_tokens=24, ignore_eos=True))
    text = long.generation.text
    assert len(long.generation.token_ids) == 24 and len(text) > 6
    stop = text[3:6]
    at = text.find(stop)
    stopped = rag.query(QUESTION, k=3, options=RequestOptions(max_new_tokens=24, ignore_eos=True, stop=(stop,)))
    assert stopped.generation.text == text[:at]
    assert stopped.generation.finish_reason == "stop"
    assert len(stopped.generation.token_ids) < 24  # no token after the one completing the stop string
    assert stopped.generation.token_ids == long.generation.token_ids[: len(stopped.generation.token_ids)]
    pieces = list(rag.stream(QUESTION, k=3, max_new_tokens=24, stop=stop))
    assert "".join(pieces[:-1]) == text[:at] and pieces[-1].generation.finish_reason == "stop"


def test_mode_travels_in_the_options_and_rungs_sharing_entries_share_an_executor():
    rag = demo_rag()
    by_keyword = rag.query(QUESTION, k=3, mode="pic_transition_rope", max_new_tokens=4)
    by_options = rag.query(QUESTION, k=3, options=rag.options(mode="pic_transition_rope", max_new_tokens=4))
    assert by_options.generation.token_ids == by_keyword.generation.token_ids
    assert rag.executor_for("pic_addition") is rag.executor_for("pic_transition_rope") is not rag.executor
    assert rag.executor_for("full_recompute") is rag.executor_for("prefix_cache") is rag.executor
    full = rag.query(QUESTION, k=3, options=RequestOptions(mode="full_recompute", max_new_tokens=4))
    assert full.generation.cached_tokens == len(rag.shared_prefix) and full.generation.segment_hits == 0


def test_an_executor_refuses_a_rung_its_store_holds_no_entries_for(tokenizer):
    from conftest import get_model, random_ids

    ex = HypicExecutor(get_model("qwen3_5"), config=ExecutorConfig(seam_tokens=4))
    *segs, q = random_ids([12, 12, 3], seed=2)
    with pytest.raises(RequestError, match="4-token ones"):
        ex.generate(segs, q, options=RequestOptions(mode="pic_transition_rope", max_new_tokens=2))
    full = ex.generate(segs, q, options=RequestOptions(mode="full_recompute", max_new_tokens=2))
    assert full.segment_hits == 0 and len(full.token_ids) == 2


@pytest.mark.parametrize("bad", [["ok", ""], [3], ["x"] * 17, "y" * 257])
def test_bad_stop_strings_are_refused_with_the_rule(bad):
    with pytest.raises(RequestError, match="stop"):
        RequestOptions(stop=bad)
