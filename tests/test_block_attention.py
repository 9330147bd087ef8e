"""hypic_rag.training.block_attention: the training mask that keeps document tokens to their own document, as
cached segments are computed, while questions and answers see everything."""

import pytest
import torch

from hypic_rag.data.synthetic import context_text, make_dataset
from hypic_rag.training.block_attention import attention_masks, block_mask
from hypic_rag.training.data import batch_of, encode
from hypic_rag.training.model_init import build_model


def test_a_blocked_rows_documents_see_the_prefix_and_themselves_and_the_question_sees_all():
    doc_of = torch.tensor([[0, 1, 1, 2, 2, 2, 0, 0]])
    allowed = block_mask(doc_of, torch.tensor([True]))[0, 0]
    expect = torch.tensor([
        [1, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0],
        [1, 0, 0, 1, 0, 0, 0, 0],  # document 2 does not see document 1
        [1, 0, 0, 1, 1, 0, 0, 0],
        [1, 0, 0, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 1, 1, 0],  # the question sees every document
        [1, 1, 1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(allowed, expect)
    assert torch.equal(block_mask(doc_of, torch.tensor([False]))[0, 0], torch.ones(8, 8, dtype=torch.bool).tril())


def test_encode_numbers_each_documents_tokens_and_nothing_else(tokenizer):
    record = make_dataset(1, seed=2, num_docs=3)[0]
    e = encode(record, tokenizer, extra_questions=2, pool="all")
    assert len(e.doc_of) == len(e.ids) and e.doc_of[0] == 0
    for n, doc in enumerate(record["ctxs"], start=1):
        assert tokenizer.decode([t for t, d in zip(e.ids, e.doc_of) if d == n]) == context_text(doc)
    first_question = e.doc_of.index(0, 1)
    assert set(e.doc_of[first_question:]) == {0} and tokenizer.decode(e.ids[first_question:]).startswith("Question:")


def test_the_models_attention_follows_the_mask_and_unblocked_rows_are_untouched(tokenizer):
    torch.manual_seed(0)
    model = build_model(tokenizer, hidden=32, layers=4, attention_gain=0.5, copy_strength=2.0)
    model.config._attn_implementation = "eager"
    batch = batch_of(make_dataset(2, seed=3, num_docs=3), tokenizer, 0.3, extra_questions=2, pool="all")
    blocked = torch.tensor([True, False])
    plain = model(input_ids=batch.ids, output_attentions=True)
    masked = model(input_ids=batch.ids, attention_mask=attention_masks(model, batch.doc_of, blocked),
                   output_attentions=True)
    assert torch.allclose(masked.logits[1], plain.logits[1], atol=1e-6)
    weights = masked.attentions[-1][0].sum(0)  # the blocked row, summed over heads: [T, T]
    doc_of = batch.doc_of[0]
    for q in range(1, len(doc_of)):
        if doc_of[q] > 0:
            elsewhere = (doc_of != doc_of[q]) & (torch.arange(len(doc_of)) != 0)
            assert weights[q, elsewhere].abs().max() == 0.0
    question = int((doc_of[1:] == 0).nonzero()[0]) + 1
    assert weights[question, 1:question].sum() > 0  # the question reads the documents
    later_docs = doc_of[1:question] > 1
    assert not torch.allclose(masked.logits[0, 1:question][later_docs], plain.logits[0, 1:question][later_docs])


def test_a_model_without_full_attention_is_refused(tokenizer):
    model = build_model(tokenizer, hidden=32, layers=4)
    model.config.layer_types = ["linear_attention"] * len(model.config.layer_types)
    with pytest.raises(ValueError, match="needs full-attention layers"):
        attention_masks(model, torch.zeros(1, 4, dtype=torch.long), torch.tensor([True]))
