"""Time to first token on the lean runtime beside the transformers path, with fair baselines.

Per segment count, in one process and interleaved request by request, on one Qwen3.5-style (Gated
DeltaNet) or Bamba-style (Mamba2) model:
  - full prefill: one forward over the whole prompt (transformers; lean);
  - prefix cache at 0% prefix hits (every request's segments unseen): transformers runs one forward
    per segment and deep-copies the cache at each boundary; lean prefills the rest in one forward
    with a snapshot per boundary (as vLLM / SGLang do for hybrids);
  - hypic at 100% segment hits (transformers seam pass; lean seam chain);
  - hypic at 0% segment hits (a cold request: every segment unseen, so its misses are precomputed
    first: transformers one forward per length group; lean one forward over all of them, then the
    seam chain).
Every figure is a ratio to the lean full prefill measured in the same run. Beside the times, the
kernel-launching aten ops each request dispatches up to its first token (view ops excluded): on a
GPU a small request costs about its launches (a request replayed as a CUDA graph counts only what
it dispatches from the host). On CUDA the lean hypic request runs as the library serves it, through
its shape bucket's CUDA graph (runtime/request_graphs.py; the first two requests of each count,
eager then captured, are not recorded). Also one decode step after the hypic request, through the
request's Decoder as the executor decodes (p50 of 16 after two: on CUDA replayed), and on a GPU each lean figure over its roofline floor (bench/roofline.py: measured
bf16 matmul peak and copy bandwidth).

    python bench/lean_ttft.py --out bench/results                      # CPU, one thread
    python bench/lean_ttft.py --family bamba --name lean_ttft_bamba      # the Mamba2 family
    python bench/lean_ttft.py --device cuda --dtype bfloat16 --hidden 2048 --layers 24 --name lean_ttft_gpu
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import torch

import hypic_rag  # noqa: F401
from hypic_rag import ExecutorConfig, HypicExecutor
from hypic_rag.executor.clock import clock
from hypic_rag.runtime.dispatch_count import kernel_ops as ops_of

from lean_bench_model import add_model_arguments, build_model  # (bench/, beside this script)
from roofline import decode_floor, measure_peaks, request_floors

QUESTION_TOKENS = 24
WARMUP_REQUESTS = 2  # a CUDA graph bucket's first request runs eagerly, its second captures


def timed(device, fn) -> float:
    t0 = clock(device)
    fn()
    return clock(device) - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(p, hidden=384, layers=8, vocab=8192, segments=[8, 16, 32])
    p.add_argument("--requests", type=int, default=3)
    p.add_argument("--seam", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--out", default="bench/results")
    p.add_argument("--name", default="lean_ttft")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = build_model(args, getattr(torch, args.dtype), args.device)
    device = next(model.parameters()).device
    rng = np.random.default_rng(0)
    prefix = [0]
    question = rng.integers(3, args.vocab, size=QUESTION_TOKENS).tolist()

    def executor(mode, runtime, store=None):
        return HypicExecutor(model, config=ExecutorConfig(mode=mode, seam_tokens=args.seam, max_new_tokens=1,
                                                          runtime=runtime, prefix_cache_entries=4096),
                             shared_prefix=prefix, store=store)

    peaks = measure_peaks() if args.device == "cuda" else None
    rows = []
    for n in args.segments:
        lean_hypic = executor("hypic", "lean")
        cells = {
            "full prefill, transformers": executor("full_recompute", "transformers"),
            "full prefill, lean": executor("full_recompute", "lean"),
            "prefix cache @0%, transformers": executor("prefix_cache", "transformers"),
            "prefix cache @0%, lean": executor("prefix_cache", "lean"),
            "hypic@100%, transformers": executor("hypic", "transformers", store=lean_hypic.store),
            "hypic@100%, lean": lean_hypic,
            "hypic@0% (cold), transformers": executor("hypic", "transformers"),
            "hypic@0% (cold), lean": executor("hypic", "lean"),
        }
        unseen = ("prefix cache", "hypic@0%")  # cells whose every request brings segments never seen
        requests = [[rng.integers(3, args.vocab, size=args.segment_tokens).tolist() for _ in range(n)]
                    for _ in range(args.requests + WARMUP_REQUESTS)]
        for segs in requests:  # offline precompute: hypic at 100% hits
            for s in segs:
                lean_hypic.ensure(s)
        samples = {label: [] for label in cells}
        for i, segs in enumerate(requests):  # the first two warm every path up (CUDA: eager, then capture), unrecorded
            for label, ex in cells.items():
                if label.startswith(unseen):  # 0% hits: segments no earlier request brought
                    segs_here = [[t ^ (i + 1) if t > 2 else t for t in s] for s in segs]
                else:
                    segs_here = segs
                seconds = timed(device, lambda: ex.first_token_logits(segs_here, question))
                if i >= WARMUP_REQUESTS:
                    samples[label].append(seconds)
        segs = requests[0]
        ops = {label: ops_of(lambda: ex.first_token_logits(
            [[t ^ 255 if t > 2 else t for t in s] for s in segs] if label.startswith(unseen) else segs, question))
            for label, ex in cells.items()}
        p50 = {label: statistics.median(v) for label, v in samples.items()}
        base = p50["full prefill, lean"]
        entries = [lean_hypic.ensure(s)[0] for s in segs]
        logits, state = lean_hypic.lean.hypic(entries, question)
        token = int(torch.argmax(logits))
        decoder = lean_hypic.lean.decoder(state)  # as the executor decodes (CUDA: captured once, then replayed)
        steps = [timed(device, lambda: decoder.step(token)) for _ in range(18)][2:]
        rows.append({"segments": n, "prompt_tokens": 1 + n * args.segment_tokens + QUESTION_TOKENS,
                     "ttft_p50_s": p50, "x_faster_than_lean_full": {k: base / v for k, v in p50.items()},
                     "kernel_ops": ops, "decode_step_p50_s": statistics.median(steps)})
        if peaks is not None:
            floors = request_floors(model, n, args.segment_tokens, QUESTION_TOKENS, args.seam,
                                    entries[0].nbytes, peaks)
            floors["decode_floor_s"] = decode_floor(model, state.length, peaks)
            rows[-1]["over_floor"] = {"full prefill, lean": base / floors["full_floor_s"],
                                      "hypic@100%, lean": p50["hypic@100%, lean"] / floors["hypic_floor_s"],
                                      "decode step, lean": rows[-1]["decode_step_p50_s"] / floors["decode_floor_s"]}
            rows[-1]["floors_s"] = floors
        print(json.dumps(rows[-1]), flush=True)
        report(args, model, rows)  # after every segment count: a run cut short keeps what it measured


def report(args, model, rows) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {args.threads} thread(s)"
    meta = {"device": device_name, "family": args.family, "dtype": args.dtype, "hidden": args.hidden, "layers": args.layers,
            "vocab": args.vocab, "segment_tokens": args.segment_tokens, "question_tokens": QUESTION_TOKENS,
            "seam": args.seam, "requests": args.requests,
            "params_millions": round(sum(p.numel() for p in model.parameters()) / 1e6, 1)}
    (out / f"{args.name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = ["# TTFT on the lean runtime beside the transformers path", "",
             f"{device_name}, {args.dtype}, {'Bamba' if args.family == 'bamba' else 'Qwen3.5'}-style "
             f"{meta['params_millions']}M parameters ({args.layers} layers, "
             f"hidden {args.hidden}); segments of {args.segment_tokens} tokens, question {QUESTION_TOKENS} tokens, seam "
             f"w={args.seam}; p50 of {args.requests} requests after one unrecorded warm-up, all cells interleaved in "
             "one process. x = lean full prefill p50 / the cell's p50. Kernel ops: aten ops dispatched up to the first "
             "token, view ops excluded. Prefix cache at 0% prefix hits and hypic at 0% segment hits: every request's "
             "segments unseen.", "",
             "| segments | path | TTFT p50 (ms) | x vs lean full prefill | kernel ops |", "|---|---|---|---|---|"]
    for row in rows:
        for label, seconds in row["ttft_p50_s"].items():
            lines.append(f"| {row['segments']} | {label} | {seconds * 1000:.1f} | "
                         f"{row['x_faster_than_lean_full'][label]:.2f} | {row['kernel_ops'][label]} |")
    lines += ["", "| segments | lean decode step p50 (ms) | full / floor | hypic@100% / floor | decode step / floor |",
              "|---|---|---|---|---|"]
    for row in rows:
        over = row.get("over_floor", {})
        cells = [f"{over[k]:.1f}" if k in over else "n/a (CPU)" for k in
                 ("full prefill, lean", "hypic@100%, lean", "decode step, lean")]
        lines.append(f"| {row['segments']} | {row['decode_step_p50_s'] * 1000:.2f} | " + " | ".join(cells) + " |")
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
