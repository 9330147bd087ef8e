"""Cold-request TTFT: every retrieved segment is a cache miss, computed in one of four ways.

  - local, one forward per miss (miss_batch_size=1);
  - local, equal-length misses batched (miss_batch_size=8);
  - Ray, 1 worker; Ray, 2 workers (a local cluster; each actor loads the checkpoint, 1 torch thread).

The model is a random-init Qwen3.5-style hybrid saved to a temporary checkpoint so the Ray actors
can load it. Requests use fresh random segments (no hits), interleaved across the four ways in one
process, so all see the same machine state.

    python bench/cold_ttft.py --out bench/results
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

import hypic_rag  # noqa: F401
from hypic_rag import ExecutorConfig, HypicExecutor
from hypic_rag.distributed.ray_prefill import RayConfig, RayPrefill

from ttft import qwen35_style  # (bench/ttft.py, beside this script)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=384)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--segments", type=int, default=8)
    p.add_argument("--segment-tokens", type=int, default=512)
    p.add_argument("--requests", type=int, default=3)
    p.add_argument("--seam", type=int, default=8)
    p.add_argument("--out", default="bench/results")
    args = p.parse_args()
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config = qwen35_style(args.hidden, args.vocab)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa").eval()
    checkpoint = Path(tempfile.mkdtemp(prefix="hypic-cold-")) / "model"
    model.save_pretrained(checkpoint)
    rng = np.random.default_rng(0)
    prefix = [0]

    def executor(batch: int, prefill=None) -> HypicExecutor:
        cfg = ExecutorConfig(mode="hypic", seam_tokens=args.seam, max_new_tokens=1, miss_batch_size=batch)
        return HypicExecutor(model, config=cfg, shared_prefix=prefix, miss_prefill=prefill)

    serial, batched = executor(1), executor(8)
    ray1 = RayPrefill.for_executor(batched, checkpoint, RayConfig(workers=1, cpus_per_worker=0.5))
    ray2 = RayPrefill.for_executor(batched, checkpoint, RayConfig(workers=2, cpus_per_worker=0.5))
    ways = {"local, one forward per miss": serial, "local, batched misses": batched,
            "ray, 1 worker": executor(8, ray1), "ray, 2 workers": executor(8, ray2)}
    question = rng.integers(3, args.vocab, size=24).tolist()
    samples = {name: [] for name in ways}
    splits = {name: [] for name in ways}
    for r in range(args.requests + 1):  # the first round warms every path up and is not counted
        for name, ex in ways.items():
            segs = [rng.integers(3, args.vocab, size=args.segment_tokens).tolist() for _ in range(args.segments)]
            result = ex.generate(segs, question)
            assert result.segment_misses == args.segments
            if r > 0:
                samples[name].append(result.timings.ttft)
                splits[name].append(result.timings.precompute_misses)
    ray2.close()
    ray1.close()  # owns the local cluster: last
    rows = [{"way": name, "ttft_p50": statistics.median(v), "ttft_mean": statistics.mean(v),
             "miss_prefill_mean": statistics.mean(splits[name])} for name, v in samples.items()]
    base = rows[0]["ttft_p50"]
    for row in rows:
        row["speedup_vs_one_by_one"] = base / row["ttft_p50"]
    meta = {"segments": args.segments, "segment_tokens": args.segment_tokens, "requests": args.requests,
            "device": "cpu", "driver_threads": torch.get_num_threads(), "cpus": __import__("os").cpu_count(),
            "params_millions": round(sum(p.numel() for p in model.parameters()) / 1e6, 1)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cold_ttft.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = ["# Cold-request TTFT: all segments are cache misses", "",
             f"Qwen3.5-style random init ({meta['params_millions']}M parameters), CPU with {meta['cpus']} cores, "
             f"driver {meta['driver_threads']} torch threads, Ray actors 1 thread each; {args.segments} segments of "
             f"{args.segment_tokens} tokens per request, {args.requests} measured requests per way after one warm-up "
             "round, all ways interleaved in one process.", "",
             "| way | TTFT p50 (ms) | miss prefill mean (ms) | x vs one forward per miss |", "|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['way']} | {row['ttft_p50'] * 1000:.0f} | {row['miss_prefill_mean'] * 1000:.0f} | "
                     f"{row['speedup_vs_one_by_one']:.2f} |")
    (out / "cold_ttft.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
