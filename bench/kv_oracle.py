"""Where hypic's first-token error lives, and how much of it fresh K/V for a few tokens recover.

Per question, the cache hypic (w=8) composes before the question is patched with parts of the
full-recompute cache, then the question is prefilled and its next-token distribution compared
with full recompute's (KL(full || variant), and whether the top token agrees):
  - all_kv_from_full / linear_states_from_full: every attention layer's K/V, or every linear
    layer's recurrent and conv state, taken from full recompute (the other part stays hypic's);
  - top8_moved_kv_from_full: the K/V rows of the 8 tokens whose K/V moved most (summed relative
    change over the attention layers), from full recompute;
  - top8_read_kv_from_full: the K/V rows of the 8 tokens the question's last token attends to most
    in hypic's cache (summed over layers and heads), from full recompute;
  - read_tokens_warmup{m}: hypic_adaptive's step (executor/adaptive_recompute.py) at a 15% budget
    with an m-token warm-up from a zero state: no full-recompute values, only what a request can
    compute (m=8 is the rung's default), with its trust check (a patch that moves the answer by more
    than TRUST_KL is dropped; `dropped` counts those).

    python bench/kv_oracle.py --model hypic_rag/assets/small_model_no_block_mask --condition gold_first
    python bench/kv_oracle.py --report        # bench/results/kv_oracle.md from the JSONs written
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from hypic_rag import ExecutorConfig, HypicExecutor
from hypic_rag.api import load_model
from hypic_rag.config import Mode, PromptTemplate
from hypic_rag.data.synthetic import make_dataset
from hypic_rag.executor import cache_ops
from hypic_rag.executor.adaptive_recompute import TRUST_KL, answer_shift, patch_spans, plan_patches, token_weights
from hypic_rag.executor.attention_probe import last_query_attention
from hypic_rag.executor.compose import compose_segments

from accuracy import encode, kl  # bench/accuracy.py
from held_out import CONDITIONS, HELD_OUT_BASE, place_gold  # bench/held_out.py

# The questions this diagnosis looked at chose hypic_adaptive's warm-up and trust threshold: they are
# held_out's seeds before 2026-12-05, listed as used in bench/used_seeds.json (held_out moved on).
TUNING_SEEDS = {"docs2": HELD_OUT_BASE + 2, "docs4": HELD_OUT_BASE + 4, "docs8": HELD_OUT_BASE + 8,
                "gold_first": HELD_OUT_BASE + 41, "gold_last": HELD_OUT_BASE + 42}

BUDGET, SEAM, TOP = 0.15, 8, 8
VARIANTS = ["hypic_w8", "all_kv_from_full", "linear_states_from_full", "top8_moved_kv_from_full",
            "top8_read_kv_from_full", "read_tokens_warmup4", "read_tokens_warmup8", "read_tokens_warmup16"]


def with_rows_from(cache, full, spec, rows: torch.Tensor):
    out = cache_ops.clone_cache(cache)
    for layer in spec.attention:
        keys, values = cache_ops.kv(full, layer.layer_idx)
        cache_ops.replace_kv_rows(out, layer.layer_idx, rows, keys[:, :, rows], values[:, :, rows])
    return out


def run(model_path: str, condition: str, questions: int) -> dict:
    docs, where, _ = CONDITIONS[condition]
    seed = TUNING_SEEDS[condition]
    model, tokenizer = load_model(model_path, device="cpu")
    prefix = [tokenizer.bos_token_id]
    ex = HypicExecutor(model, tokenizer, ExecutorConfig(mode="hypic", seam_tokens=SEAM, max_new_tokens=1), prefix)
    spec, p0 = ex.spec, len(prefix)
    outcomes = {v: {"kl": [], "top1": [], "recomputed": [], "dropped": []} for v in VARIANTS}
    for record in make_dataset(questions, seed=seed, num_docs=docs):
        segs, q = encode(place_gold(record, where), tokenizer, PromptTemplate())
        entries = [ex.ensure(s)[0] for s in segs]
        body = [t for s in segs for t in s]
        end = p0 + len(body)
        hypic = ex._start_cache()  # seams one segment at a time: K/V rows in position order
        compose_segments(model, spec, ex.rotary_emb, hypic, entries, Mode.HYPIC, p0, ex.mixers, False, None)
        full = ex._start_cache()
        ex._prefill(full, body, p0, logits=False)
        reference = ex._prefill(cache_ops.clone_cache(full), q, end, logits=True)
        seams = [p0 + sum(map(len, segs[:i])) + k for i, s in enumerate(segs) for k in range(min(SEAM, len(s)))]
        with last_query_attention(model, {l.layer_idx for l in spec.attention}) as recorded:
            hypic_logits = ex._prefill(cache_ops.clone_cache(hypic), q, end, logits=True)
        weights = token_weights(recorded, torch.arange(end), end)
        moved = torch.zeros(end)
        for layer in spec.attention:
            for j in (0, 1):
                a, b = cache_ops.kv(hypic, layer.layer_idx)[j], cache_ops.kv(full, layer.layer_idx)[j]
                moved += ((a - b).norm(dim=-1) / b.norm(dim=-1).clamp_min(1e-6)).sum(dim=(0, 1))
        variants = {"hypic_w8": (hypic_logits, len(seams))}
        everything = torch.arange(end)
        variants["all_kv_from_full"] = (ex._prefill(with_rows_from(hypic, full, spec, everything), q, end, True),
                                        len(body))
        swapped = cache_ops.clone_cache(hypic)
        cache_ops.restore_linear_states(swapped, cache_ops.linear_states(full, spec))
        variants["linear_states_from_full"] = (ex._prefill(swapped, q, end, logits=True), len(body))
        for name, score in (("top8_moved_kv_from_full", moved), ("top8_read_kv_from_full", weights)):
            rows = p0 + score[p0:].argsort(descending=True)[:TOP]  # document tokens (the prefix is exact)
            variants[name] = (ex._prefill(with_rows_from(hypic, full, spec, rows), q, end, logits=True), TOP)
        eligible = torch.ones(end, dtype=torch.bool)
        eligible[: p0 + len(segs[0])] = False
        eligible[seams] = False
        budget = int(BUDGET * len(body)) - len(seams)
        for m in (4, 8, 16):
            spans, picks = plan_patches(weights, eligible, budget, p0, warmup=m)
            patched = cache_ops.clone_cache(hypic)
            patch_spans(model, spec, patched, torch.arange(end), [0] * p0 + body, spans, picks)
            logits = ex._prefill(patched, q, end, logits=True)
            dropped = answer_shift(hypic_logits, logits) > TRUST_KL
            outcomes[f"read_tokens_warmup{m}"]["dropped"].append(int(dropped))
            variants[f"read_tokens_warmup{m}"] = (hypic_logits if dropped else logits,
                                                  len(seams) + sum(b - a for a, b in spans))
        for name, (logits, recomputed) in variants.items():
            got = outcomes[name]
            got["kl"].append(kl(reference.float(), logits.float()))
            got["top1"].append(int(logits.argmax() == reference.argmax()))
            got["recomputed"].append(recomputed / len(body))
    return {"model": Path(model_path).name, "condition": condition, "seed": seed, "questions": questions,
            "outcomes": outcomes}


def report(out: Path) -> None:
    lines = ["# Where hypic's first-token error lives (bench/kv_oracle.py)", "",
             "hypic w=8's cache before the question, patched with parts of full recompute's (or, for "
             "read_tokens_warmup*, with what hypic_adaptive computes itself at a 15% budget); KL(full || "
             "variant) of the next token after the question, its median, top-token agreement with full "
             "recompute, and the share of the documents' tokens recomputed or copied from full recompute.", "",
             "| model | condition | variant | mean KL | median KL | top-1 agrees | tokens | dropped |",
             "|---|---|---|---|---|---|---|---|"]
    for path in sorted(out.glob("kv_oracle/*.json")):
        run_ = json.loads(path.read_text())
        for name, got in run_["outcomes"].items():
            n = len(got["kl"])
            lines.append(f"| {run_['model']} | {run_['condition']} | {name} | {sum(got['kl']) / n:.2e} | "
                         f"{statistics.median(got['kl']):.1e} | {sum(got['top1'])}/{n} | "
                         f"{100 * sum(got['recomputed']) / n:.1f}% | {sum(got['dropped']) if got['dropped'] else ''} |")
    (out / "kv_oracle.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="hypic_rag/assets/small_model_no_block_mask")
    p.add_argument("--condition", default="gold_first", choices=list(CONDITIONS))
    p.add_argument("--questions", type=int, default=100)
    p.add_argument("--report", action="store_true")
    p.add_argument("--out", default="bench/results")
    args = p.parse_args()
    out = Path(args.out)
    if not args.report:
        torch.set_num_threads(1)
        result = run(args.model, args.condition, args.questions)
        (out / "kv_oracle").mkdir(parents=True, exist_ok=True)
        (out / "kv_oracle" / f"{result['model']}_{args.condition}.json").write_text(json.dumps(result))
    report(out)


if __name__ == "__main__":
    main()
