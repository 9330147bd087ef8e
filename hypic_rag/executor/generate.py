"""Token-by-token decoding from a filled cache: greedy, or temperature / top-p sampling."""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from transformers import DynamicCache

from hypic_rag.config import RequestOptions


class Sampler:
    def __init__(self, options: RequestOptions, device: torch.device):
        self.temperature = options.temperature
        self.top_p = options.top_p
        self.generator = None
        if options.seed is not None:
            self.generator = torch.Generator(device=device).manual_seed(options.seed)

    def __call__(self, logits: torch.Tensor) -> int:
        """Pick the next token from logits [vocab]."""
        if self.temperature == 0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits.float() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < self.top_p
            sorted_probs = sorted_probs * keep
            probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=self.generator))


def transformers_step(model: torch.nn.Module, cache: DynamicCache) -> Callable[[int, int], torch.Tensor]:
    """One decode step on the transformers path: (token, position) -> next-token logits [vocab]."""

    device = next(model.parameters()).device

    def step(token: int, position: int) -> torch.Tensor:
        out = model(input_ids=torch.tensor([[token]], device=device), past_key_values=cache,
                    position_ids=torch.tensor([[position]], device=device), use_cache=True)
        return out.logits[0, -1]

    return step


@torch.no_grad()
def decode(
    step: Callable[[int, int], torch.Tensor],
    first_logits: torch.Tensor,
    position: int,
    max_new_tokens: int,
    sampler: Sampler,
    eos_ids: frozenset[int],
) -> Iterator[int]:
    """Yield generated token ids; stops after an EOS token (which is yielded) or max_new_tokens.
    `step(token, position)` extends the request's state by one token and returns the next logits."""
    logits = first_logits
    for i in range(max_new_tokens):
        token = sampler(logits)
        yield token
        if token in eos_ids or i == max_new_tokens - 1:
            return
        logits = step(token, position)
        position += 1
