"""Bytes per token of a stored segment entry, beside what a prefix cache holds for the same tokens.

A hypic entry holds, per linear layer, the interior state E and the operator M (fp32 or bf16) and
the conv tail; per attention layer the segment's K/V (no end state since 2026-12-03: a request's
first segment composes from the shared prefix like the others, executor/prefix_anchor.py). A prefix cache (vLLM / SGLang for hybrids)
holds the same K/V and, at a segment boundary, one linear state and conv tail per layer. Entries are
measured from a real precompute of one segment (SegmentEntry.nbytes, what the store writes before
serialisation), split by part; the prefix cache's figure is the same K/V plus one fp32 state (the
size of E) and tail per linear layer.

    python bench/entry_bytes.py --out bench/results                     # shipped model + 1.4B config
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


def nbytes(t) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def measure(name: str, model, tokens: int, seam: int, interior_dtype: str = "float32") -> dict:
    ex = HypicExecutor(model, config=ExecutorConfig(seam_tokens=seam, runtime="transformers",
                                                    interior_dtype=interior_dtype))
    vocab = model.config.get_text_config(decoder=True).vocab_size
    ids = torch.randint(3, vocab, (tokens,), generator=torch.Generator().manual_seed(0)).tolist()
    t0 = time.perf_counter()
    entry = ex.precompute(ids)
    seconds = time.perf_counter() - t0
    parts = {
        "end_state": sum(nbytes(l.end_state) for l in entry.linear),
        "interior_E": sum(nbytes(l.interior_state) for l in entry.linear),
        "operator_M": sum(nbytes(l.interior_operator) for l in entry.linear),
        "conv_tail": sum(nbytes(l.conv_tail) for l in entry.linear),
        "kv": sum(nbytes(a.keys) + nbytes(a.values) for a in entry.attention),
    }
    total = sum(parts.values())
    assert total == entry.nbytes
    state = sum(l.interior_state.numel() * 4 for l in entry.linear if l.interior_state is not None)  # fp32
    prefix = parts["kv"] + state + parts["conv_tail"]  # K/V + one state and tail per linear layer
    return {"model": name, "interior_dtype": interior_dtype, "tokens": tokens, "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            "entry_bytes": total, "entry_bytes_per_token": total / tokens, "parts": parts,
            "prefix_cache_bytes": prefix, "prefix_cache_bytes_per_token": prefix / tokens,
            "ratio_to_prefix_cache": total / prefix, "precompute_seconds": round(seconds, 2)}


def first_token_kl(model, tokenizer, questions: int, seam: int) -> dict[str, tuple[float, float]]:
    """Mean first-token KL to full recompute of hypic with fp32 and with bf16 E/M, per condition."""
    import torch.nn.functional as F

    from hypic_rag.config import PromptTemplate
    from hypic_rag.data.synthetic import make_dataset

    template = PromptTemplate()
    prefix = [tokenizer.bos_token_id]
    full = HypicExecutor(model, tokenizer, ExecutorConfig(mode="full_recompute"), prefix)
    runs = {d: HypicExecutor(model, tokenizer, ExecutorConfig(seam_tokens=seam, interior_dtype=d,
                                                              runtime="transformers"), prefix)
            for d in ("float32", "bfloat16")}
    out = {}
    for condition, docs, paragraphs in (("4 short documents", 4, 0), ("8 documents of 5 paragraphs", 8, 5)):
        totals = {d: 0.0 for d in runs}
        for record in make_dataset(questions, seed=31_337, num_docs=docs, paragraphs=paragraphs):
            segments = [tokenizer.encode(template.segment.format(title=c["title"], text=c["text"]),
                                         add_special_tokens=False) for c in record["ctxs"]]
            question = tokenizer.encode(template.question.format(question=record["question"]), add_special_tokens=False)
            reference = full.first_token_logits(segments, question).log_softmax(-1)
            for d, ex in runs.items():
                logits = ex.first_token_logits(segments, question).log_softmax(-1)
                totals[d] += F.kl_div(logits, reference, log_target=True, reduction="sum").item() / questions
        out[condition] = (totals["float32"], totals["bfloat16"])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=512, help="segment length")
    p.add_argument("--seam", type=int, default=8)
    p.add_argument("--hidden", type=int, default=2048, help="the Qwen3.5-style config's hidden size (1.4B: 2048)")
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--vocab", type=int, default=32768)
    p.add_argument("--kl-questions", type=int, default=100, help="questions per KL condition")
    p.add_argument("--out", default="bench/results")
    p.add_argument("--name", default="entry_bytes")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    shipped, tokenizer = load_model(SHIPPED_MODEL, device="cpu")
    for interior in ("float32", "bfloat16"):
        rows.append(measure("shipped small_model (fp32)", shipped, args.tokens, args.seam, interior))
    kls = first_token_kl(shipped, tokenizer, args.kl_questions, args.seam)
    from transformers import AutoModelForCausalLM

    config = qwen3_5_style_config(args.vocab, args.hidden, args.layers, heads=8, linear_key_heads=4,
                                  linear_value_heads=8, max_positions=32768)
    torch.manual_seed(0)
    big = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa").eval()
    params = sum(p.numel() for p in big.parameters()) / 1e9
    for interior in ("float32", "bfloat16"):
        rows.append(measure(f"Qwen3.5-style {params:.2f}B (bf16)", big, args.tokens, args.seam, interior))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps({"entries": rows, "first_token_kl": kls}, indent=1))
    mib = 2**20
    lines = [f"# Entry bytes per token at {args.tokens}-token segments (seam {args.seam})", "",
             "A prefix cache holds the same K/V plus one linear state and conv tail per layer. Target (issue): "
             "an entry at most 2x a prefix cache's bytes per token.", "",
             "| model | E, M in | entry MiB | bytes/token | end state | E | M | conv | K/V | prefix cache bytes/token "
             "| ratio |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p_ = r["parts"]
        lines.append(f"| {r['model']} | {r['interior_dtype']} | {r['entry_bytes'] / mib:.1f} | {r['entry_bytes_per_token']:.0f} | "
                     f"{p_['end_state'] / mib:.1f} | {p_['interior_E'] / mib:.1f} | {p_['operator_M'] / mib:.1f} | "
                     f"{p_['conv_tail'] / mib:.2f} | {p_['kv'] / mib:.1f} | {r['prefix_cache_bytes_per_token']:.0f} | "
                     f"{r['ratio_to_prefix_cache']:.2f}x |")
    lines += ["", "Sizes in MiB per entry. Entries hold no end state since 2026-12-03 (a request's first segment composes from the shared prefix); E and M as the column says; K/V and conv tails in the "
              "model's dtype.", "",
              f"First-token KL(full recompute || hypic w={args.seam}) on the shipped model, mean over "
              f"{args.kl_questions} synthetic questions per condition (target: bf16 E/M within 10% of fp32):", "",
              "| condition | fp32 E, M | bf16 E, M | bf16 / fp32 |", "|---|---|---|---|"]
    for condition, (fp32, bf16) in kls.items():
        lines.append(f"| {condition} | {fp32:.3e} | {bf16:.3e} | {bf16 / fp32:.3f} |")
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
