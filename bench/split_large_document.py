"""Time and peak memory of segmenting one very long single-paragraph document, and of hashing a
model's weights for its fingerprint (both run before the first segment of a corpus is stored).

    python bench/split_large_document.py --megabytes 10 --out bench/results

Each measurement runs in a fresh subprocess so that its peak RSS is its own; the document is words
drawn at random with no paragraph break and no sentence end, the worst case for the splitter.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

SPLIT = """
import json, random, resource, time
from transformers import AutoTokenizer
from hypic_rag.api import SHIPPED_MODEL
from hypic_rag.config import PromptTemplate
from hypic_rag.precompute.corpus import Document
from hypic_rag.precompute.segmenter import Segmenter
tok = AutoTokenizer.from_pretrained(SHIPPED_MODEL)
r = random.Random(0)
words = ["alpha", "river", "stone", "Kamo", "north", "bread", "lamp", "quiet"]
text = " ".join(r.choice(words) for _ in range(int({mb} * 2**20 / 5.6)))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
calls = []
t0 = time.perf_counter()
segs = Segmenter(tok, PromptTemplate(), 512).split(Document("big", "big", text), lambda d, t: calls.append(time.perf_counter()))
seconds = time.perf_counter() - t0
gaps = [b - a for a, b in zip([t0] + calls, calls)]
print(json.dumps(dict(characters=len(text), segments=len(segs), seconds=seconds, progress_calls=len(calls),
                      longest_silence_s=max(gaps), max_segment_tokens=max(len(s.token_ids) for s in segs),
                      peak_rss_growth_mb=(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)))
"""

HASH = """
import json, time, torch
from hypic_rag.models.fingerprint import _hash_weights
torch.manual_seed(0)
model = torch.nn.Sequential(*[torch.nn.Linear(4096, 4096, bias=False) for _ in range({layers})]).to(torch.bfloat16)
t0 = time.perf_counter()
_hash_weights(model)
seconds = time.perf_counter() - t0
nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps(dict(bytes=nbytes, seconds=seconds, gb_per_s=nbytes / seconds / 1e9)))
"""


def run(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=10.0)
    parser.add_argument("--hash-layers", type=int, default=40, help="4096x4096 bf16 matrices to hash (40: 1.3 GB)")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    split = run(SPLIT.replace("{mb}", str(args.megabytes)))
    hashing = run(HASH.replace("{layers}", str(args.hash_layers)))
    result = {"split": split, "weights_hash": hashing}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "split_large_document.json").write_text(json.dumps(result, indent=1))
    md = [
        "# Splitting one very long document, and hashing weights for the fingerprint",
        "",
        f"`python bench/split_large_document.py --megabytes {args.megabytes:g}` (one process per measurement).",
        "",
        "| measurement | value |",
        "|---|---|",
        f"| single-paragraph document | {split['characters'] / 2**20:.1f} MiB, {split['characters']} characters |",
        f"| segments (512-token budget) | {split['segments']}, longest {split['max_segment_tokens']} tokens |",
        f"| split time | {split['seconds']:.1f} s |",
        f"| progress reports | {split['progress_calls']}, longest silence {split['longest_silence_s']:.2f} s |",
        f"| peak RSS growth while splitting | {split['peak_rss_growth_mb']:.0f} MB |",
        f"| weights hashed (every byte, SHA-256) | {hashing['bytes'] / 1e9:.2f} GB in {hashing['seconds']:.1f} s "
        f"({hashing['gb_per_s']:.2f} GB/s, once per model per process) |",
    ]
    (out / "split_large_document.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
