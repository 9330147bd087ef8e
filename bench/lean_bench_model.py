"""What the lean-runtime benches share: the model they build from the command line and a CUDA-event timer.

    add_model_arguments(parser, hidden=384, layers=8, vocab=8192)
    model = build_model(args, dtype, device)     # a random-initialised Qwen3.5- or Bamba-style model
    seconds = cuda_timed(fn, reps)               # median of `reps` CUDA-event timings of fn()
"""

from __future__ import annotations

import argparse
import statistics

import torch

from hypic_rag.models.tiny import bamba_style_config, qwen3_5_style_config


def add_model_arguments(p: argparse.ArgumentParser, hidden: int, layers: int, vocab: int, segments: list[int]) -> None:
    p.add_argument("--family", default="qwen3_5", choices=["qwen3_5", "bamba"])
    p.add_argument("--hidden", type=int, default=hidden)
    p.add_argument("--layers", type=int, default=layers)
    p.add_argument("--vocab", type=int, default=vocab)
    p.add_argument("--segments", type=int, nargs="+", default=segments)
    p.add_argument("--segment-tokens", type=int, default=512)


def build_model(args: argparse.Namespace, dtype: torch.dtype, device: str) -> torch.nn.Module:
    """The bench's model (seed 0), SDPA attention, in eval mode on `device`."""
    from transformers import AutoModelForCausalLM

    if args.family == "bamba":
        config = bamba_style_config(args.vocab, args.hidden, args.layers)
    else:
        config = qwen3_5_style_config(args.vocab, args.hidden, args.layers, heads=8, linear_key_heads=4,
                                      linear_value_heads=8, max_positions=32768)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.to(device).eval()


def cuda_timed(fn, reps: int, warmup: int = 0) -> float:
    """Median seconds of `reps` calls of fn() by CUDA events, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return statistics.median(times)
