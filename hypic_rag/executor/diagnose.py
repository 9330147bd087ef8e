"""Per-layer divergence of a cached rung from full recompute, for one request (as HYPIC's
diag_layer_divergence script reports it).

Both sides fill the same context, the rung by composing cached entries (with its seams) and full
recompute by prefilling every token; then the question runs once more on each, at the same positions,
with every layer's hidden states kept. A layer's relative error is ||h_rung - h_full|| / ||h_full||
over the question's tokens, at that layer's output: where it first crosses `threshold` is where the
cached context stops carrying what full attention to the real context gives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from hypic_rag.config import Mode
from hypic_rag.errors import RequestError
from hypic_rag.executor.compose import compose_segments


@dataclass(frozen=True)
class LayerDivergence:
    """layer: decoder layer index; kind: "linear" or "attention" (the mixer it runs); relative_error as above."""

    layer: int
    kind: str
    relative_error: float


@dataclass(frozen=True)
class Diagnosis:
    """One request's divergence per layer for `mode`; first_over: the first layer whose error exceeds
    `threshold` (None: none does); first_token_kl: KL(full || mode) of the next-token distribution."""

    mode: str
    threshold: float
    prompt_tokens: int
    recomputed_tokens: int
    layers: tuple[LayerDivergence, ...]
    first_over: int | None
    first_token_kl: float

    def __repr__(self) -> str:
        worst = max(self.layers, key=lambda l: l.relative_error)
        return (f"Diagnosis(mode={self.mode!r}, layers={len(self.layers)}, first_over={self.first_over} "
                f"(threshold {self.threshold}), worst=layer {worst.layer} {worst.relative_error:.3g}, "
                f"first_token_kl={self.first_token_kl:.3g})")

    def to_dict(self) -> dict:
        return {"mode": self.mode, "threshold": self.threshold, "prompt_tokens": self.prompt_tokens,
                "recomputed_tokens": self.recomputed_tokens, "first_over": self.first_over,
                "first_token_kl": self.first_token_kl,
                "layers": [{"layer": l.layer, "kind": l.kind, "relative_error": l.relative_error} for l in self.layers]}

    def table(self) -> str:
        """A plain-text table, one row per layer, with a bar of the error (fits 80 columns)."""
        top = max(max(l.relative_error for l in self.layers), self.threshold)
        rows = [f"{self.mode}: hidden-state error vs full recompute (question tokens)",
                f"layer  kind      relative error  (| marks the threshold, {self.threshold:g})"]
        mark = round(40 * self.threshold / top)
        for l in self.layers:
            bar = ("#" * round(40 * l.relative_error / top)).ljust(41)
            if bar[mark] == " ":  # the threshold's mark, where the bar does not reach it
                bar = bar[:mark] + "|" + bar[mark + 1:]
            rows.append(f"{l.layer:>5}  {l.kind:<9} {l.relative_error:>8.2e}  {bar.rstrip()}")
        first = "none" if self.first_over is None else f"layer {self.first_over}"
        rows.append(f"first layer over the threshold: {first}; first-token KL {self.first_token_kl:.3e}")
        return "\n".join(rows)


@torch.no_grad()
def _question_states(executor, cache, question: Sequence[int], start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every layer's output at the question's tokens [layers, T, hidden] fp32, and the last logits."""
    ids = torch.tensor([list(question)], device=executor.device)
    positions = torch.arange(start, start + len(question), device=executor.device)[None]
    out = executor.model(input_ids=ids, past_key_values=cache, position_ids=positions, use_cache=True,
                         output_hidden_states=True)
    states = torch.stack([h[0].float() for h in out.hidden_states[1:]])  # [0] is the embeddings
    return states, out.logits[0, -1].float()


@torch.no_grad()
def diagnose(executor, segments: Sequence[Sequence[int]], question: Sequence[int], mode: Mode | str | None = None,
             threshold: float = 0.05) -> Diagnosis:
    """Divergence per layer of `mode` (default: the executor's; a cached rung) from full recompute."""
    if not (isinstance(threshold, (int, float)) and threshold > 0):
        raise RequestError(f"threshold must be a positive number, got {threshold!r}")
    segs, q = executor._validated_request(segments, question)
    mode = executor._mode(mode)
    if not mode.rung.segment_cache:
        raise RequestError(f"diagnose compares a cached rung with full recompute; {mode.value} caches no segments "
                           "(choose pic_addition, pic_transition, pic_transition_rope or hypic)")
    p0 = len(executor.shared_prefix)
    full = executor._start_cache()
    body = [t for s in segs for t in s]
    executor._prefill(full, body, p0, logits=False)
    reference, ref_logits = _question_states(executor, full, q, p0 + len(body))
    entries = [executor._ensure(s)[0] for s in segs]
    cache = executor._start_cache()
    adaptive = mode.rung.adaptive  # it chooses what to recompute from the question: it needs it
    report = compose_segments(executor.model, executor.spec, executor.rotary_emb, cache, entries, mode, p0,
                              executor.mixers, executor.config.batched_seams, list(q) if adaptive else None,
                              executor.config.recompute_budget, keep_question=False)
    states, logits = _question_states(executor, cache, q, report.end_offset)
    errors = ((states - reference).flatten(1).norm(dim=1) / reference.flatten(1).norm(dim=1).clamp_min(1e-12)).tolist()
    linear = {l.layer_idx for l in executor.spec.linear}
    layers = tuple(LayerDivergence(i, "linear" if i in linear else "attention", float(e)) for i, e in enumerate(errors))
    first = next((l.layer for l in layers if l.relative_error > threshold), None)
    kl = F.kl_div(logits.log_softmax(-1), ref_logits.log_softmax(-1), log_target=True, reduction="sum").item()
    return Diagnosis(mode=mode.value, threshold=float(threshold), prompt_tokens=p0 + len(body) + len(q),
                     recomputed_tokens=report.recomputed_tokens, layers=layers, first_over=first,
                     first_token_kl=max(kl, 0.0))
