"""The ablation ladder orders by accuracy on multi-segment prompts (mean next-token KL to full recompute)."""

import pytest
import torch.nn.functional as F

from conftest import get_model, random_ids
from hypic_rag import ExecutorConfig, HypicExecutor

LADDER = [("pic_addition", 0), ("pic_transition", 0), ("pic_transition_rope", 0), ("hypic", 8)]


def kl(p_logits, q_logits):
    """KL(full || mode) of next-token distributions."""
    return F.kl_div(q_logits.log_softmax(-1), p_logits.log_softmax(-1), log_target=True, reduction="sum").item()


def mean_kls(family, prompts):
    model = get_model(family)
    full = HypicExecutor(model, config=ExecutorConfig(mode="full_recompute"))
    executors = {m: HypicExecutor(model, config=ExecutorConfig(mode=m, seam_tokens=w)) for m, w in LADDER}
    totals = {m: 0.0 for m, _ in LADDER}
    for segs, q in prompts:
        reference = full.first_token_logits(segs, q)
        for mode, ex in executors.items():
            totals[mode] += kl(reference, ex.first_token_logits(segs, q)) / len(prompts)
    return totals


@pytest.mark.parametrize(
    "family,lengths,seeds",
    [("qwen3_5", [48, 37, 52, 41, 8], range(100, 106)), ("kimi_linear", [44, 39, 50, 8], range(200, 204))],
)
def test_ladder_orders(family, lengths, seeds):
    prompts = []
    for seed in seeds:
        *segs, q = random_ids(lengths, seed=seed)
        prompts.append((segs, q))
    kls = mean_kls(family, prompts)
    print(f"mean KL to full recompute ({family} tiny):", {k: f"{v:.3e}" for k, v in kls.items()})
    assert kls["hypic"] < kls["pic_transition_rope"] < kls["pic_addition"]
    assert kls["pic_transition_rope"] <= kls["pic_transition"]


def test_the_ladder_is_one_table_with_a_row_per_mode():
    from hypic_rag.config import LADDER, Mode

    assert set(LADDER) == set(Mode)
    cached = [m for m in Mode if m.rung.segment_cache]
    assert cached == [Mode.PIC_ADDITION, Mode.PIC_TRANSITION, Mode.PIC_TRANSITION_ROPE, Mode.HYPIC]
    for lower, upper in zip(cached, cached[1:]):  # each cached rung adds one thing to the one below
        a, b = lower.rung, upper.rung
        assert sum((b.operator - a.operator, b.rotate_keys - a.rotate_keys, b.seams - a.seams)) == 1
    assert ExecutorConfig(mode="pic_transition_rope", seam_tokens=8).precompute_seam == 0
    assert ExecutorConfig(mode="hypic", seam_tokens=8).precompute_seam == 8
