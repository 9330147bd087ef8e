"""bench/attention_supervision.py and the pointers of bench/training_data.py: each pointer names the
answer's first value token, and the recorded log weights are the layer's real attention weights."""

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from attention_supervision import AnswerAttention, attention_layer_indices  # noqa: E402
from small_model_init import build_model  # noqa: E402
from training_data import batch_of, encode, extra_pairs  # noqa: E402

from hypic_rag.data.synthetic import make_dataset  # noqa: E402


def test_every_single_hop_answer_points_from_its_question_to_its_value_in_the_right_document(tokenizer):
    for record in make_dataset(12, seed=5, num_docs=3):
        e = encode(record, tokenizer, extra_questions=6, pool="all")
        asked = [record["question"]] + [qa["question"] for qa in extra_pairs(record, 6, "all")]
        values = [record["answers"][0]] + [qa["answer"] for qa in extra_pairs(record, 6, "all")]
        single = [i for i, q in enumerate(asked) if "mentor" not in q]
        assert len(e.pointers) == len(single)
        for (query, value), i in zip(e.pointers, single):
            assert tokenizer.decode(e.ids[query - 1: query + 1]).endswith("Answer:")
            assert e.weights[query + 1] == -1.0 and e.weights[query] != -1.0  # the answer starts right after
            first = tokenizer.encode(" " + values[i], add_special_tokens=False)[0]
            assert e.ids[value] == first and e.ids[query + 1] == first
            name = asked[i].rsplit(" of ", 1)[1].rstrip("?")
            sentence_start = tokenizer.decode(e.ids[value - 12: value])
            assert sentence_start.endswith(f"of {name} is")  # `The K of N is V.` of the asked person
            assert value < query


def test_recorded_log_weights_equal_eager_attention_and_the_loss_is_their_head_mean(tokenizer):
    torch.manual_seed(0)
    model = build_model(tokenizer, hidden=32, layers=4, attention_gain=0.5, copy_strength=2.0)
    with torch.no_grad():  # random gains, so the check does not rest on all-equal norms
        for i in attention_layer_indices(model):
            model.model.layers[i].self_attn.q_norm.weight.normal_(0, 0.5)
    model.config._attn_implementation = "eager"
    batch = batch_of(make_dataset(3, seed=1, num_docs=2), tokenizer, 0.3, extra_questions=3, pool="all")
    layer = attention_layer_indices(model)[0]
    hook = AnswerAttention(model, layer)
    seen = []
    spy = model.model.layers[layer].self_attn.register_forward_hook(lambda m, a, o: seen.append(o[0].detach()))
    sup = hook.loss(model, batch.ids, batch.pointers)
    out, loss, recorded = sup.output, sup.pointing, hook.log_weights
    hook.close()
    spy.remove()
    eager = model(input_ids=batch.ids, output_attentions=True).attentions
    weights = eager[0] if len(eager) == 1 else eager[layer]
    rows, queries, values = batch.pointers.unbind(1)
    expect = weights[rows, :, queries]  # [P, H, T]
    assert torch.allclose(recorded.exp(), expect, atol=1e-5)
    manual = -expect[torch.arange(len(rows)), :, values].mean(1).log().mean()
    assert loss.item() == pytest.approx(manual.item(), rel=1e-4)
    assert torch.allclose(out.logits, model(input_ids=batch.ids).logits, atol=1e-5)  # the hook changes nothing
    # the copy term reads the layer's own output at each query as a last hidden state would be read
    read = model.lm_head(model.model.norm(seen[0][rows, queries]))
    copy = torch.nn.functional.cross_entropy(read, batch.ids[rows, values])
    assert sup.copying.item() == pytest.approx(copy.item(), rel=1e-5)
    (loss + sup.copying).backward()
    attn = model.model.layers[layer].self_attn
    assert attn.k_proj.weight.grad.abs().sum() > 0 and attn.q_proj.weight.grad.abs().sum() > 0


def test_a_layer_without_full_attention_is_refused(tokenizer):
    model = build_model(tokenizer, hidden=32, layers=4)
    with pytest.raises(ValueError, match="pick one of"):
        AnswerAttention(model, 0)
