"""All seams in one layer-major forward == one seam forward per segment (Gated DeltaNet and Mamba2 hybrids)."""

import pytest
import torch

from conftest import get_model, random_ids
from hypic_rag import ExecutorConfig, HypicExecutor
from hypic_rag.executor.seam_pass import supports_batched_seams
from hypic_rag.models.registry import model_spec

CASES = [([40, 30, 50, 20, 6], 8), ([40, 5, 50, 3, 6], 4), ([12, 33, 9, 7], 2), ([25, 25, 6], 30)]


def executor(model, seam, batched, prefix=(), **kw):
    return HypicExecutor(model, config=ExecutorConfig(seam_tokens=seam, batched_seams=batched, **kw),
                         shared_prefix=prefix)


BATCHED = ["qwen3_5", "qwen3_next", "kimi_linear", "falcon_h1", "bamba", "lfm2", "olmo_hybrid", "bailing_hybrid",
           "nemotron_h", "zamba2", "minimax"]


@pytest.mark.parametrize("family", BATCHED)
@pytest.mark.parametrize("lengths,seam", CASES)
def test_one_seam_pass_equals_a_forward_per_seam(family, lengths, seam, monkeypatch):
    """Covers segments shorter than the seam, interiors shorter than the conv kernel, and w = 2."""
    from hypic_rag.executor import compose

    passes = []
    real = compose.batched_seam_pass
    monkeypatch.setattr(compose, "batched_seam_pass", lambda *a, **k: passes.append(1) or real(*a, **k))
    model = get_model(family)
    prefix, *segs, q = random_ids([5] + lengths, seed=len(lengths) + seam)
    one = executor(model, seam, True, prefix).first_token_logits(segs, q)
    assert passes == [1]  # the batched path really ran
    each = executor(model, seam, False, prefix).first_token_logits(segs, q)
    assert passes == [1]
    assert (one - each).abs().max() < 1e-5
    # tiny random Mamba2 hybrids' interiors (Bamba, Nemotron-H, Zamba2) barely depend on context, and
    # LFM2's only state is a conv window shorter than the seam, so hypic ~= full (LFM2: exact) there
    if family not in ("bamba", "nemotron_h", "zamba2", "lfm2"):
        full = HypicExecutor(model, config=ExecutorConfig(mode="full_recompute"), shared_prefix=prefix)
        assert (full.first_token_logits(segs, q) - one).abs().max() > 1e-3 or max(lengths[1:-1]) <= seam


@pytest.mark.parametrize("family", BATCHED)
def test_decoding_after_one_seam_pass_continues_the_same_cache(family):
    model = get_model(family)
    *segs, q = random_ids([30, 30, 30, 30, 5], seed=31)
    a = executor(model, 8, True, max_new_tokens=6).generate(segs, q)
    b = executor(model, 8, False, max_new_tokens=6).generate(segs, q)
    assert a.token_ids == b.token_ids and a.cached_tokens == b.cached_tokens


def test_every_supported_family_takes_the_batched_path():
    for family in BATCHED:
        assert supports_batched_seams(get_model(family), model_spec(get_model(family)))


def test_batched_seams_flag_is_validated():
    with pytest.raises(ValueError, match="batched_seams"):
        ExecutorConfig(batched_seams="yes")


def test_mamba2_seams_run_as_one_short_chunk_each():
    """With the model's chunk (64) longer than a seam, each seam is scanned as one chunk of 16, not padded to 64."""
    from transformers import AutoModelForCausalLM

    from hypic_rag.models.tiny import give_long_memory, tiny_config

    config = tiny_config("falcon_h1")
    config.mamba_chunk_size = 64
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    give_long_memory(model)
    *segs, q = random_ids([70, 45, 90, 6], seed=9)
    one = executor(model, 8, True).first_token_logits(segs, q)
    each = executor(model, 8, False).first_token_logits(segs, q)
    assert (one - each).abs().max() < 1e-5


def test_equal_width_seams_share_one_recurrence_and_one_conv_call_per_layer(monkeypatch):
    """Seams 8, 8, 8 then a 6-token question: per linear layer, one batched call for the three seams
    (augmented start [0 | I]) and one for the question, instead of four of each."""
    import functools
    import sys

    model = get_model("qwen3_5")
    spec = model_spec(model)
    module = sys.modules[spec.linear[0].modeling_module]
    *segs, q = random_ids([40, 30, 50, 20, 6], seed=12)
    ex = executor(model, 8, True)
    before = ex.first_token_logits(segs, q)  # entries are precomputed here
    calls = {"step": [], "conv": []}
    def counting(key, real):
        @functools.wraps(real)  # keeps the signature the seam pass reads argument names from
        def wrapper(*args, **kwargs):
            calls[key].append(args[0].shape[0])
            return real(*args, **kwargs)
        return wrapper

    for key, name in (("step", spec.linear[0].recurrent_fn), ("conv", "causal_conv1d_fn")):
        monkeypatch.setattr(module, name, counting(key, getattr(module, name)))
    again = ex.first_token_logits(segs, q)
    assert torch.equal(before, again)
    # batch sizes: the four seams (segment 0's from the prefix too), then the question
    assert calls["step"] == [4, 1] * len(spec.linear)
    assert calls["conv"] == [4, 1] * len(spec.linear)
