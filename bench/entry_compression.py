"""What zstd and lz4 save on stored entries, and what they cost in throughput.

One 512-token entry of the shipped model and of the 1.43B Qwen3.5-style config (bf16 weights, E and
M in fp32 and in bf16), serialised as the disk and Redis tiers write them; each codec compresses and
decompresses that blob on one thread (best of --repeat), and the ratio is bytes written over the
plain blob. Throughput is in MB/s of the plain blob. Bytes per token beside a prefix cache's are
entry_bytes.py's figures times the ratio.

    python bench/entry_compression.py --out bench/results
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import hypic_rag  # noqa: F401
from hypic_rag import ExecutorConfig, HypicExecutor
from hypic_rag.api import SHIPPED_MODEL, load_model
from hypic_rag.models.tiny import qwen3_5_style_config
from hypic_rag.store.compression import compress, decompress
from hypic_rag.store.serde import entry_to_bytes

CODECS = (("zstd", 1), ("zstd", 3), ("zstd", 9), ("lz4", 3))


def entry_blob(model, tokens: int, interior: str) -> bytes:
    ex = HypicExecutor(model, config=ExecutorConfig(seam_tokens=8, runtime="transformers", interior_dtype=interior))
    vocab = model.config.get_text_config(decoder=True).vocab_size
    ids = torch.randint(3, vocab, (tokens,), generator=torch.Generator().manual_seed(0)).tolist()
    return entry_to_bytes(ex.precompute(ids))


def measure(name: str, interior: str, blob: bytes, repeat: int) -> list[dict]:
    rows = []
    for codec, level in CODECS:
        best_c = best_d = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            packed = compress(blob, codec, level)
            best_c = min(best_c, time.perf_counter() - t0)
            t0 = time.perf_counter()
            back = decompress(packed, limit=2 * len(blob))
            best_d = min(best_d, time.perf_counter() - t0)
        assert back == blob
        rows.append({"model": name, "interior_dtype": interior, "codec": codec, "level": level,
                     "plain_bytes": len(blob), "stored_bytes": len(packed), "ratio": len(packed) / len(blob),
                     "compress_mb_s": len(blob) / best_c / 1e6, "decompress_mb_s": len(blob) / best_d / 1e6})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", default="bench/results")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    shipped, _ = load_model(SHIPPED_MODEL, device="cpu")
    from transformers import AutoModelForCausalLM

    config = qwen3_5_style_config(32768, 2048, 24, heads=8, linear_key_heads=4, linear_value_heads=8,
                                  max_positions=32768)
    torch.manual_seed(0)
    big = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa").eval()
    params = sum(p.numel() for p in big.parameters()) / 1e9
    for name, model in (("shipped small_model (fp32)", shipped), (f"Qwen3.5-style {params:.2f}B (bf16)", big)):
        for interior in ("float32", "bfloat16"):
            blob = entry_blob(model, args.tokens, interior)
            rows.extend(measure(name, interior, blob, args.repeat))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "entry_compression.json").write_text(json.dumps(rows, indent=1))
    lines = [f"# Compressing stored entries ({args.tokens}-token segments)", "",
             "`python bench/entry_compression.py --out bench/results`: one thread on a shared 2-core machine, best of "
             f"{args.repeat}; MB/s of the plain blob. `StoreConfig(compression=\"zstd\" | \"lz4\", "
             "compression_level=N)`.", "",
             "| model | E, M in | codec | plain MiB | stored MiB | stored / plain | compress MB/s | decompress MB/s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        codec = f"{r['codec']}-{r['level']}" if r["codec"] == "zstd" else r["codec"]
        lines.append(f"| {r['model']} | {r['interior_dtype']} | {codec} | {r['plain_bytes'] / 2**20:.1f} | "
                     f"{r['stored_bytes'] / 2**20:.1f} | {r['ratio']:.3f} | {r['compress_mb_s']:.0f} | "
                     f"{r['decompress_mb_s']:.0f} |")
    (out / "entry_compression.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
