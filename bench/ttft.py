"""Time to first token: plain transformers generate vs prefix caching vs hypic, side by side.

Workload: requests of N retrieved segments (~512 tokens each) plus a question, segments drawn from a
pool with Zipf(1.1) popularity, so requests share segments but rarely in the same order. Per model
and N, in one process and interleaved request by request:
  - hf_generate: model.generate(max_new_tokens=1) on the whole prompt (full prefill);
  - prefix_cache: exact reuse of the longest previously seen segment prefix (warmed by the same
    warm-up requests as the others);
  - hypic at segment hit rates 100% / 50% / 0% (the fraction of the pool precomputed offline);
  - at 100%, hypic with one seam forward per segment, and hypic_adaptive (three forwards: the seam
    pass, the question, the picked tokens' spans with the question again).
TTFT is request start to first token. Throughput is requests/s at concurrency 1 with
--decode-tokens new tokens (1 / mean end-to-end latency). p99 over few samples is close to the max.

    python bench/ttft.py --out bench/results
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

import hypic_rag  # noqa: F401
from hypic_rag import ExecutorConfig, HypicExecutor
from hypic_rag.executor.clock import clock
from hypic_rag.models.tiny import qwen3_5_style_config

from roofline import measure_peaks, request_floors  # (bench/roofline.py, beside this script)


def qwen35_style(hidden: int, vocab: int, layers: int = 8):
    return qwen3_5_style_config(vocab, hidden, layers, heads=8, linear_key_heads=4, linear_value_heads=8,
                                max_positions=32768)


def falcon_h1_style(hidden: int, vocab: int, layers: int = 6):
    from transformers import FalconH1Config

    return FalconH1Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=layers,
        num_attention_heads=8, num_key_value_heads=2, head_dim=hidden // 8, mamba_d_ssm=hidden, mamba_n_heads=8,
        mamba_d_head=hidden // 8, mamba_d_state=32, mamba_n_groups=1, mamba_d_conv=4, mamba_chunk_size=128,
        max_position_embeddings=32768, eos_token_id=1, bos_token_id=0, pad_token_id=2,
    )


MODELS = {"qwen3_5-style": qwen35_style, "falcon_h1-style": falcon_h1_style}
DEFAULT_LAYERS = {"qwen3_5-style": 8, "falcon_h1-style": 6}
QUESTION_TOKENS = 24


def zipf_requests(rng, pool: int, n: int, count: int, s: float = 1.1) -> list[list[int]]:
    weights = 1.0 / np.arange(1, pool + 1) ** s
    weights /= weights.sum()
    return [list(rng.choice(pool, size=n, replace=False, p=weights)) for _ in range(count)]


def hf_generate_ttft(model, ids: list[int]) -> float:
    device = model.device
    t0 = clock(device)
    with torch.no_grad():
        model.generate(torch.tensor([ids], device=device), max_new_tokens=1, do_sample=False, pad_token_id=2)
    return clock(device) - t0


def forget_misses(ex, pool, req, rate: float) -> None:
    """Keep a hit rate below 100%: drop the entries this request computed for segments outside the precomputed part."""
    if rate < 1.0:
        for idx in req:
            if idx >= int(round(rate * len(pool))):
                ex.store.pop(ex.key_of(pool[idx]))


def pct(values, q):
    return float(np.percentile(values, q))


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
PER_SEAM = "hypic@100%, seam forward per segment"
ADAPTIVE = "hypic_adaptive@100%"  # the same entries; then the tokens the question reads, within --recompute-budget


def run_model(name, config, args, rng, peaks=None, on_row=None) -> dict:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[args.dtype], attn_implementation="sdpa")
    model = model.to(args.device).eval()
    pool = [rng.integers(3, config.vocab_size, size=args.segment_tokens).tolist() for _ in range(args.pool)]
    question = rng.integers(3, config.vocab_size, size=QUESTION_TOKENS).tolist()
    prefix = [0]
    out = {"model": name, "params_millions": round(sum(p.numel() for p in model.parameters()) / 1e6, 1), "runs": [],
           "shape": {"hidden": config.hidden_size, "vocab": config.vocab_size, "layers": config.num_hidden_layers,
                     "question_tokens": len(question)}}
    for n in args.segments:
        warm = zipf_requests(rng, args.pool, n, args.warmup)
        measured = zipf_requests(rng, args.pool, n, args.requests)
        prefix_ex = HypicExecutor(model, config=ExecutorConfig(mode="prefix_cache", max_new_tokens=1), shared_prefix=prefix)
        hypic = {}
        for rate in args.hit_rates:
            ex = HypicExecutor(model, config=ExecutorConfig(mode="hypic", seam_tokens=args.seam, max_new_tokens=1),
                               shared_prefix=prefix)
            for idx in range(int(round(rate * args.pool))):  # offline precompute of part of the pool
                ex.ensure(pool[idx])
            hypic[rate] = ex
        bytes_per_segment = hypic[max(args.hit_rates)].store.get(hypic[max(args.hit_rates)].key_of(pool[0])).nbytes \
            if max(args.hit_rates) > 0 else None
        variants = [(f"hypic@{int(r * 100)}%", ex, r) for r, ex in hypic.items()]
        if 1.0 in hypic:  # the same entries, with one seam forward per segment instead of one seam pass
            per_seam = ExecutorConfig(mode="hypic", seam_tokens=args.seam, max_new_tokens=1, batched_seams=False)
            variants.append((PER_SEAM, HypicExecutor(model, config=per_seam, shared_prefix=prefix,
                                                     store=hypic[1.0].store), 1.0))
            adaptive = ExecutorConfig(mode="hypic_adaptive", seam_tokens=args.seam, max_new_tokens=1,
                                      recompute_budget=args.recompute_budget)
            variants.append((ADAPTIVE, HypicExecutor(model, config=adaptive, shared_prefix=prefix,
                                                     store=hypic[1.0].store), 1.0))
        for k, req in enumerate(warm):
            segs = [pool[i] for i in req]
            prefix_ex.generate(segs, question)
            if k == 0:  # every other mode once too, so first-call costs (kernel autotuning, allocator) stay out
                hf_generate_ttft(model, prefix + [t for s in segs for t in s] + question)
                for _, ex, rate in variants:
                    ex.generate(segs, question)
                    forget_misses(ex, pool, req, rate)
        samples = {"hf_generate": [], "prefix_cache": [], **{label: [] for label, _, _ in variants}}
        splits = {k: [] for k in samples}
        for req in measured:
            segs = [pool[i] for i in req]
            flat = prefix + [t for s in segs for t in s] + question
            samples["hf_generate"].append(hf_generate_ttft(model, flat))
            r = prefix_ex.generate(segs, question)
            samples["prefix_cache"].append(r.timings.ttft)
            for label, ex, rate in variants:
                r = ex.generate(segs, question)
                samples[label].append(r.timings.ttft)
                splits[label].append(
                    {"load": r.timings.load, "precompute_misses": r.timings.precompute_misses,
                     "compose": r.timings.compose, "seam": r.timings.seam, "prefill": r.timings.prefill,
                     "segment_hits": r.segment_hits, "segment_misses": r.segment_misses})
                forget_misses(ex, pool, req, rate)
        # end-to-end throughput at concurrency 1 with decode
        thr = {}
        fresh = zipf_requests(rng, args.pool, n, args.throughput_requests)  # not seen by any cache yet
        for label, runner in (("hf_generate", None), ("prefix_cache", prefix_ex), ("hypic@100%", hypic.get(1.0))):
            if label != "hf_generate" and runner is None:
                continue
            t0 = clock(model.device)
            for req in fresh:
                segs = [pool[i] for i in req]
                if runner is None:
                    with torch.no_grad():
                        model.generate(torch.tensor([prefix + [t for s in segs for t in s] + question], device=model.device),
                                       max_new_tokens=args.decode_tokens, min_new_tokens=args.decode_tokens,
                                       do_sample=False, pad_token_id=2)
                else:
                    runner.generate(segs, question, max_new_tokens=args.decode_tokens, ignore_eos=True)
            thr[label] = args.throughput_requests / (clock(model.device) - t0)
        row = {"segments": n, "prompt_tokens": 1 + n * args.segment_tokens + len(question),
               "bytes_per_segment": bytes_per_segment,
               "prefix_cache_segment_hit_rate": prefix_ex.prefix_snapshots.hits
               / max(1, prefix_ex.prefix_snapshots.hits + prefix_ex.prefix_snapshots.misses),
               "ttft": {k: {"p50": pct(v, 50), "p99": pct(v, 99), "mean": statistics.mean(v)} for k, v in samples.items()},
               "split_mean": {k: {f: statistics.mean(s[f] for s in v) for f in v[0]} for k, v in splits.items() if v},
               "throughput_rps": thr}
        full, pref = row["ttft"]["hf_generate"]["p50"], row["ttft"]["prefix_cache"]["p50"]
        row["speedup_p50"] = {k: {"vs_full": full / v["p50"], "vs_prefix_cache": pref / v["p50"]}
                              for k, v in row["ttft"].items() if k.startswith("hypic")}
        if peaks is not None:
            row["roofline"] = request_floors(model, n, args.segment_tokens, len(question), args.seam,
                                             bytes_per_segment, peaks)
        out["runs"].append(row)
        if on_row is not None:  # rewrite the report after every cell: a run cut short keeps what it measured
            on_row(out)
        print(json.dumps({"model": name, "segments": n, "p50": {k: round(v["p50"], 4) for k, v in row["ttft"].items()},
                          "speedup": row["speedup_p50"]}), flush=True)
    return out


def write_report(results: list[dict], args, out: Path, peaks: dict | None = None, saved_meta: dict | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    meta = {"segment_tokens": args.segment_tokens, "pool": args.pool, "zipf_s": 1.1, "requests": args.requests,
            "warmup": args.warmup, "seam": args.seam, "device": device, "threads": torch.get_num_threads(),
            "dtype": args.dtype, "decode_tokens": args.decode_tokens, "peaks": peaks,
            "kernels": "fla (Triton)" if "fla" in sys.modules and sys.modules["fla"] is not None else "pure torch"}
    if saved_meta is not None:  # a rewritten report describes the machine that measured it
        meta.update({k: saved_meta[k] for k in ("device", "threads", "kernels") if k in saved_meta})
        device = meta["device"]
    (out / f"{args.name}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    lines = ["# TTFT: hf generate (full prefill) vs prefix caching vs hypic", "",
             f"{device}, {args.dtype}, linear-attention kernels: {meta['kernels']}; segments of {args.segment_tokens} tokens from a pool of "
             f"{args.pool} with Zipf(1.1) popularity; {args.requests} measured requests per cell after {args.warmup} "
             f"warm-up requests (the first also runs every mode once, unrecorded); seam w={args.seam}. All modes run interleaved in one process. Speedup = "
             "TTFT p50 of the baseline / TTFT p50 of hypic. Throughput = requests / wall time at concurrency 1 with "
             f"{args.decode_tokens} generated tokens.", ""]
    for model in results:
        lines += [f"## {model['model']} ({model['params_millions']}M parameters)", "",
                  "| segments | mode | TTFT p50 (ms) | TTFT p99 (ms) | x vs full | x vs prefix cache |",
                  "|---|---|---|---|---|---|"]
        for run in model["runs"]:
            for mode, t in run["ttft"].items():
                sp = run["speedup_p50"].get(mode, {})
                lines.append(f"| {run['segments']} | {mode} | {t['p50'] * 1000:.1f} | {t['p99'] * 1000:.1f} | "
                             f"{sp.get('vs_full', float('nan')):.2f} | {sp.get('vs_prefix_cache', float('nan')):.2f} |")
        lines += ["", "| segments | bytes / segment | prefix-cache segment hit rate | throughput req/s (full / prefix / hypic@100%) | hypic@100% split ms (load / compose / seam pass, question included / separate question prefill) |",
                  "|---|---|---|---|---|"]
        for run in model["runs"]:
            thr = run["throughput_rps"]
            s = run["split_mean"].get("hypic@100%", {})
            lines.append(
                f"| {run['segments']} | {run['bytes_per_segment']} | {run['prefix_cache_segment_hit_rate']:.2f} | "
                f"{thr.get('hf_generate', 0):.2f} / {thr.get('prefix_cache', 0):.2f} / {thr.get('hypic@100%', 0):.2f} | "
                f"{s.get('load', 0) * 1000:.1f} / {s.get('compose', 0) * 1000:.1f} / {s.get('seam', 0) * 1000:.1f} / "
                f"{s.get('prefill', 0) * 1000:.1f} |")
        if peaks is not None:
            lines += ["", f"Roofline (measured ceilings: {peaks['bf16_flops_per_s'] / 1e12:.0f} TFLOP/s bf16, "
                      f"{peaks['copy_bytes_per_s'] / 1e12:.2f} TB/s copy; floor = bytes / bandwidth + FLOPs / peak; "
                      "hypic@100% is one forward: every seam and the question in one pass):", "",
                      "| segments | full floor (ms) | full measured / floor | hypic@100% floor (ms) | hypic measured / floor |",
                      "|---|---|---|---|---|"]
            for run in model["runs"]:
                r = run["roofline"]
                lines.append(f"| {run['segments']} | {r['full_floor_s'] * 1000:.2f} | "
                             f"{run['ttft']['hf_generate']['p50'] / r['full_floor_s']:.1f} | {r['hypic_floor_s'] * 1000:.2f} | "
                             f"{run['ttft'].get('hypic@100%', {}).get('p50', float('nan')) / r['hypic_floor_s']:.1f} |")
        lines.append("")
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for ax, model in zip(axes[0], results):
        modes = list(model["runs"][0]["ttft"])
        xs = [r["segments"] for r in model["runs"]]
        for mode in modes:
            ax.plot(xs, [r["ttft"][mode]["p50"] * 1000 for r in model["runs"]], marker="o", label=mode)
        ax.set_xlabel("retrieved segments")
        ax.set_ylabel("TTFT p50 (ms)")
        ax.set_yscale("log")
        ax.set_title(model["model"])
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"{args.name}.png", dpi=110)


def rewrite_report(path: Path, cli) -> None:
    """Floors from the saved meta (measured peaks, shapes) on a weightless model of the same config
    (runs saved before shapes were recorded take them from --hidden/--vocab/--layers; questions are QUESTION_TOKENS long)."""
    saved = json.loads(path.read_text())
    meta = saved["meta"]
    args = argparse.Namespace(name=path.stem, dtype=meta["dtype"], device="cpu", segment_tokens=meta["segment_tokens"],
                              pool=meta["pool"], requests=meta["requests"], warmup=meta["warmup"], seam=meta["seam"],
                              decode_tokens=meta["decode_tokens"])
    from transformers import AutoModelForCausalLM

    for result in saved["results"]:
        shape = result.setdefault("shape", {"hidden": cli.hidden, "vocab": cli.vocab, "question_tokens": QUESTION_TOKENS,
                                            "layers": cli.layers or DEFAULT_LAYERS[result["model"]]})
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(MODELS[result["model"]](shape["hidden"], shape["vocab"], shape["layers"]),
                                                     dtype=DTYPES[meta["dtype"]])
        for run in result["runs"]:
            run["roofline"] = request_floors(model, run["segments"], meta["segment_tokens"], shape["question_tokens"],
                                             meta["seam"], run["bytes_per_segment"], meta["peaks"])
    write_report(saved["results"], args, path.parent, meta["peaks"], saved_meta=meta)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--hidden", type=int, default=384)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--segments", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--segment-tokens", type=int, default=512)
    p.add_argument("--pool", type=int, default=48)
    p.add_argument("--hit-rates", type=float, nargs="+", default=[1.0, 0.5, 0.0])
    p.add_argument("--requests", type=int, default=4)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--throughput-requests", type=int, default=2)
    p.add_argument("--decode-tokens", type=int, default=16)
    p.add_argument("--seam", type=int, default=8)
    p.add_argument("--recompute-budget", type=float, default=0.15, help="hypic_adaptive's share of the segments' tokens")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench/results")
    p.add_argument("--name", default="ttft", help="results file stem (ttft_gpu for the GPU run)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=list(DTYPES))
    p.add_argument("--layers", type=int, default=0, help="decoder layers (0: 8 for qwen3_5-style, 6 for falcon_h1-style)")
    p.add_argument("--rewrite-report", metavar="JSON",
                   help="re-derive the roofline floors of a saved run (ttft_gpu.json) and rewrite its .md/.png; "
                        "measured times are kept as they are")
    args = p.parse_args()
    if args.rewrite_report:
        rewrite_report(Path(args.rewrite_report), args)
        return
    if args.pool < max(args.segments):
        p.error(f"--pool {args.pool} is smaller than the largest --segments {max(args.segments)}: a request draws "
                "distinct segments from the pool, so raise --pool or drop that segment count")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda needs a CUDA device")
    rng = np.random.default_rng(args.seed)
    peaks = measure_peaks() if args.device == "cuda" else None
    results: list[dict] = []
    for name in args.models:
        def partial(model_result, done=tuple(results)):
            write_report([*done, model_result], args, Path(args.out), peaks)

        results.append(run_model(name, MODELS[name](args.hidden, args.vocab, args.layers or DEFAULT_LAYERS[name]), args, rng,
                                 peaks, on_row=partial))
    write_report(results, args, Path(args.out), peaks)
    print((Path(args.out) / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
