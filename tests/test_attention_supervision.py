"""hypic_rag.training.attention_supervision and the pointers of hypic_rag.training.data: each pointer names the
answer's first value token, and the recorded log weights are the layer's real attention weights."""

import pytest
import torch

from hypic_rag.data.synthetic import make_dataset
from hypic_rag.training.attention_supervision import AnswerAttention, attention_layer_indices, supervise
from hypic_rag.training.data import batch_of, encode, extra_pairs, two_hop_route
from hypic_rag.training.model_init import build_model


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


def test_two_hop_answers_point_at_the_mentors_name_and_then_at_the_mentors_value(tokenizer):
    records = [r for r in make_dataset(40, seed=5, num_docs=3) if r["hops"] == 2][:4]
    assert len(records) == 4
    for record in records:
        e = encode(record, tokenizer, extra_questions=6, pool="all", two_hop=True)
        asked = [(record["question"], record["answers"][0])] + [
            (qa["question"], qa["answer"]) for qa in extra_pairs(record, 6, "all", two_hop=True)]
        via = [(q, a) for q, a in asked if "the mentor of" in q]
        assert len(via) == 1 + len(record["two_hop_qa"])  # the record's question and the mentor's other facts
        assert len(e.pointers) == len(asked) and len(e.hop_pointers) == len(via)
        route = two_hop_route(record["ctxs"], record["question"])
        mentor = route.question.rsplit(" of ", 1)[1].rstrip("?")
        name = record["question"].rsplit(" of ", 1)[1].rstrip("?")
        by_query = dict(e.pointers)
        for (query, hop), (question, value) in zip(e.hop_pointers, via):
            assert tokenizer.decode(e.ids[hop - 12: hop + 1]).endswith(f"The mentor of {name} is {mentor}")
            assert tokenizer.decode(e.ids[hop + 1: hop + 2]) == "."  # the name's last token
            second = by_query[query]  # the same query's second hop: the mentor's value
            assert e.ids[second] == tokenizer.encode(" " + value, add_special_tokens=False)[0] == e.ids[query + 1]
            assert tokenizer.decode(e.ids[second - 12: second]).endswith(f"of {mentor} is")
        plain = encode(record, tokenizer, extra_questions=6, pool="all")
        assert plain.hop_pointers == [] and len(plain.pointers) == sum("mentor" not in q for q, _ in asked[:1]) + 6


def test_two_hop_route_reads_the_mentor_from_the_asked_persons_document_only():
    record = next(r for r in make_dataset(20, seed=3) if r["hops"] == 2)
    route = two_hop_route(record["ctxs"], record["question"])
    doc = next(d for d in record["ctxs"] if d["title"] == route.title)
    mentor = route.question.rsplit(" of ", 1)[1].rstrip("?")
    assert mentor in [d["title"] for d in record["ctxs"]] and mentor != route.title
    from hypic_rag.data.synthetic import context_text

    assert context_text(doc)[: route.name_end].endswith(f"The mentor of {route.title} is {mentor}")
    assert two_hop_route(record["ctxs"], f"What is the job of {route.title}?") is None  # single-hop
    others = [d for d in record["ctxs"] if d["title"] != route.title]
    assert two_hop_route(others, record["question"]) is None  # the asked person's document is not there


def test_two_layers_supervised_in_one_forward_give_each_layers_own_losses(tokenizer):
    torch.manual_seed(0)
    model = build_model(tokenizer, hidden=32, layers=8, attention_gain=0.5, copy_strength=2.0)
    first, last = attention_layer_indices(model)
    records = [r for r in make_dataset(30, seed=2, num_docs=2) if r["hops"] == 2][:2] + make_dataset(1, seed=4)
    batch = batch_of(records, tokenizer, 0.3, extra_questions=4, pool="all", two_hop=True)
    assert len(batch.hop_pointers) >= 2 and len(batch.pointers) > len(batch.hop_pointers)
    hop, value = AnswerAttention(model, first), AnswerAttention(model, last)
    both = supervise(model, batch.ids, [(value, batch.pointers), (hop, batch.hop_pointers)])
    alone = [value.loss(model, batch.ids, batch.pointers), hop.loss(model, batch.ids, batch.hop_pointers)]
    for together, single in zip(both, alone):
        assert together.pointing.item() == pytest.approx(single.pointing.item(), rel=1e-5)
        assert together.copying.item() == pytest.approx(single.copying.item(), rel=1e-5)
    assert both[0].pointing.item() != pytest.approx(both[1].pointing.item(), rel=1e-3)
    with pytest.raises(ValueError, match="one set of pointers"):
        supervise(model, batch.ids, [(hop, batch.hop_pointers), (hop, batch.pointers)])
