"""hypic_adaptive: hypic's seams, then fresh K/V for the cached tokens the question reads most, within
a token budget.

Where hypic's error lives (bench/kv_oracle.py, results in bench/results/kv_oracle.md): a cached
segment's interior K/V were computed without the documents before it. Give the question the
full-recompute K/V of every token and its first-token KL to full recompute drops to ~0; give it
the full-recompute linear states instead and nothing changes. Of the K/V, those of the ~8 tokens
the question's last token attends to most carry nearly all of it (KL 2.3e-3 -> 2.4e-7 on the trained
model without block masks, gold document first), while the 8 tokens whose K/V moved most carry
none. Those tokens sit anywhere in a document (the sentence of a distractor that states the asked
relation), usually far past the seam, so extending seams cannot reach them within a budget.

So, per request:
  1. hypic's seam pass (seams only), then the question, recording its last token's attention at
     every full-attention layer (executor/attention_probe.py); summed over layers and heads, the
     weight of each cached token in the first answer token.
  2. plan: tokens by weight, skipping the shared prefix, segment 0 (exact: its entry was built after
     the prefix) and the seams (fresh already). Token t costs the span [t - WARMUP_TOKENS, t] less
     what earlier picks planned; picks go on while the spans fit in recompute_budget x the
     segments' tokens, less the seams.
  3. each span runs through the model from a zero linear state and conv window (no per-token state
     is cached to start it from), its attention layers reading the composed K/V before it at their
     real positions; the picked tokens' K/V at every attention layer become the span's. The
     warm-up's own K/V are kept: from a zero state the first tokens of a run are far off (with 4
     warm-up tokens the replaced K/V are worse than the cached ones; 8 is the measured default).
  4. the question again, from the linear states it started from the first time, over the patched K/V.
     Steps 3 and 4 are one forward (executor/span_pass.py); patch_spans below is their plain
     reference, a forward per span.
  5. trust check: a warm-up from a zero state can still go wrong (1 question of the 5,000 held-out
     ones at 8 warm-up tokens: a patched "... is red." read as the answer, first-token KL 9 nats;
     at 4 warm-up tokens, a fifth to a half of the patches). If the patch moved the question's
     next-token distribution by more than TRUST_KL from step 1's (KL of step 1's to the new one),
     the patch is dropped and the request goes on from step 1's cache. The threshold was set on
     the tuning questions (bench/used_seeds.json), where the cached rungs' own first-token KL to
     full recompute never exceeded 0.69 over 15,000 requests (pic_transition_rope, hypic w=0 and
     w=8, both models), so a move that large there was the patch's error, not a correction. On
     the held-out seeds since, one question of 5,000 reached 1.14 through hypic itself, and one
     patch moved the answer by less than the threshold yet to a KL of 0.78 (EM unchanged).
The linear states the request ends with are hypic's; only attention K/V change. A request costs
three forwards: the seam pass, the question, and the spans with the question again.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from hypic_rag.executor import cache_ops
from hypic_rag.executor.attention_probe import last_query_attention
from hypic_rag.executor.span_pass import rows_by_position, spans_then_question
from hypic_rag.models.specs import ModelSpec
from hypic_rag.types import SegmentEntry

WARMUP_TOKENS = 8  # tokens run from a zero state before a picked token
TRUST_KL = 1.0  # nats: a patch that moves the next-token distribution further is dropped (step 5)


@dataclass(frozen=True)
class AdaptivePlan:
    """What one request recomputed: hypic's seams, and the spans whose picked tokens' K/V it replaced."""

    seam_tokens: int
    spans: tuple[tuple[int, int], ...]  # [start, stop) positions run from a zero state
    patched: tuple[int, ...]  # positions whose K/V the spans replaced
    budget_tokens: int  # the request's whole recompute budget (seams included)
    kept: bool = True  # False: the trust check dropped the patch (its spans were still computed)

    @property
    def recomputed_tokens(self) -> int:
        return self.seam_tokens + sum(stop - start for start, stop in self.spans)


def token_weights(recorded: dict[int, torch.Tensor], key_positions: torch.Tensor, length: int) -> torch.Tensor:
    """[length]: per position, the recorded attention summed over layers; keys past key_positions
    (the question's own) are dropped."""
    weights = torch.zeros(length)
    for probabilities in recorded.values():
        weights.index_add_(0, key_positions, probabilities[: len(key_positions)].float().cpu())
    return weights


def plan_patches(weights: torch.Tensor, eligible: torch.Tensor, budget_tokens: int, first: int,
                 warmup: int = WARMUP_TOKENS) -> tuple[tuple[tuple[int, int], ...], tuple[int, ...]]:
    """Eligible positions by weight, each costing [max(first, t - warmup), t] less what is planned,
    while the plan fits in budget_tokens; returns the merged spans [start, stop) and the picks."""
    covered: set[int] = set()
    picks: list[int] = []
    weight, allowed = weights.tolist(), eligible.tolist()  # plain lists: one lookup per token, not a tensor op
    for t in weights.argsort(descending=True, stable=True).tolist():
        if budget_tokens - len(covered) <= 0 or weight[t] <= 0:
            break
        if not allowed[t]:
            continue
        new = set(range(max(first, t - warmup), t + 1)) - covered
        if len(covered) + len(new) <= budget_tokens:
            covered |= new
            picks.append(t)
    spans: list[list[int]] = []
    for t in sorted(covered):
        if spans and spans[-1][1] == t:
            spans[-1][1] = t + 1
        else:
            spans.append([t, t + 1])
    return tuple((a, b) for a, b in spans), tuple(sorted(picks))


def patch_spans(model: torch.nn.Module, spec: ModelSpec, cache, key_positions: torch.Tensor, token_at: list[int],
                spans, patched) -> None:
    """Run each span from a zero linear state over the cache's K/V before it; the patched positions'
    K/V in `cache` (rows in cache order, at key_positions) become the span's."""
    device = next(model.parameters()).device
    row_of = rows_by_position(key_positions)
    for start, stop in spans:
        before = torch.nonzero(key_positions < start).squeeze(1).to(device)
        run = cache_ops.new_cache(model)
        for layer in spec.attention:
            keys, values = cache_ops.kv(cache, layer.layer_idx)
            cache_ops.append_kv(run, layer.layer_idx, keys.index_select(2, before), values.index_select(2, before))
        ids = torch.tensor([token_at[start:stop]], device=device)
        model.model(input_ids=ids, past_key_values=run, position_ids=torch.arange(start, stop, device=device)[None],
                    use_cache=True)
        picked = torch.tensor([t for t in patched if start <= t < stop], dtype=torch.long)
        if not len(picked):
            continue
        fresh = (len(before) + picked - start).to(device)
        for layer in spec.attention:
            keys, values = cache_ops.kv(run, layer.layer_idx)
            cache_ops.replace_kv_rows(cache, layer.layer_idx, row_of[picked].to(device),
                                      keys.index_select(2, fresh), values.index_select(2, fresh))


def _question_logits(model, cache, question: list[int], start: int) -> torch.Tensor:
    device = next(model.parameters()).device
    ids = torch.tensor([question], device=device)
    positions = torch.arange(start, start + len(question), device=device)[None]
    out = model(input_ids=ids, past_key_values=cache, position_ids=positions, use_cache=True, logits_to_keep=1)
    return out.logits[0, -1]


def recompute_read_tokens(model: torch.nn.Module, spec: ModelSpec, cache, mixers, entries: list[SegmentEntry],
                          prefix_length: int, key_positions: list[int], seam_positions: list[int],
                          question: list[int], budget: float,
                          keep_question: bool = True) -> tuple[torch.Tensor, AdaptivePlan]:
    """Steps 1-5 on a cache hypic's seam pass left without the question (entries[0]: the prefix
    anchor; key_positions: the position of each cached key row). Returns the question's next-token
    logits and the plan; the cache then holds the question too, or (keep_question=False, for
    diagnose) ends before it again, patched K/V and all."""
    end = prefix_length + sum(e.length for e in entries)
    saved = cache_ops.linear_states(cache, spec)

    def done(logits: torch.Tensor, plan: AdaptivePlan) -> tuple[torch.Tensor, AdaptivePlan]:
        if not keep_question:
            for layer in spec.attention:
                cache_ops.crop_kv(cache, layer.layer_idx, len(positions))
            cache_ops.restore_linear_states(cache, saved)
        return logits, plan

    with last_query_attention(model, {l.layer_idx for l in spec.attention}) as recorded:
        logits = _question_logits(model, cache, question, end)
    if len(recorded) != len(spec.attention):
        raise RuntimeError(f"hypic_adaptive: the attention probe saw {len(recorded)} of this model's "
                           f"{len(spec.attention)} attention layers; use mode 'hypic' for {spec.model_type}")
    seam_tokens = len(seam_positions)
    total = int(budget * sum(e.length for e in entries))
    positions = torch.tensor(key_positions + seam_positions)
    eligible = torch.ones(end, dtype=torch.bool)
    eligible[: prefix_length + entries[1].length] = False  # the prefix and segment 0 are exact
    eligible[seam_positions] = False
    spans, patched = plan_patches(token_weights(recorded, positions, end), eligible, total - seam_tokens,
                                  prefix_length)
    plan = AdaptivePlan(seam_tokens, spans, patched, total)
    if not spans:
        return done(logits, plan)
    unpatched = {l.layer_idx: cache_ops.kv(cache, l.layer_idx) for l in spec.attention}  # never written in place
    after_question = cache_ops.linear_states(cache, spec)
    for layer in spec.attention:  # back to the cache before the question
        cache_ops.crop_kv(cache, layer.layer_idx, len(positions))
    cache_ops.restore_linear_states(cache, saved)
    token_at = [0] * prefix_length + [t for e in entries for t in e.token_ids]
    patched_logits = spans_then_question(model, spec, cache, mixers, positions, token_at, spans, patched, question,
                                         end)
    if answer_shift(logits, patched_logits) <= TRUST_KL:
        return done(patched_logits, plan)
    for layer_idx, (keys, values) in unpatched.items():
        cache_ops.set_kv(cache, layer_idx, keys, values)
    cache_ops.restore_linear_states(cache, after_question)
    return done(logits, replace(plan, kept=False))


def answer_shift(before: torch.Tensor, after: torch.Tensor) -> float:
    """KL(before || after) of two next-token logit vectors, in nats."""
    return F.kl_div(after.float().log_softmax(-1), before.float().log_softmax(-1), log_target=True,
                    reduction="sum").item()
