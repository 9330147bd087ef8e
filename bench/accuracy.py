"""Accuracy of every rung of the ablation ladder on synthetic multi-document QA.

For each question the documents are segments (each tokenized alone, after the shared BOS prefix);
every mode answers greedily, and we score exact match and best token F1 against the gold answers,
plus the next-token KL(full || mode) at the first answer position.

    python bench/accuracy.py --questions 500 --out bench/results
    python bench/accuracy.py --questions 500 --docs 1 --name accuracy_gold_only --out bench/results
    python bench/accuracy.py --questions 200 --docs 8 --paragraphs 5 --name accuracy_long --out bench/results

Writes NAME.json, NAME.md and NAME.png (NAME: --name, default accuracy) into --out. Synthetic
questions come with --docs documents each: the gold one(s) plus distractors.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import hypic_rag  # noqa: F401
from hypic_rag import ExecutorConfig, HypicExecutor
from hypic_rag.api import SHIPPED_MODEL, first_line, load_model
from hypic_rag.config import PromptTemplate
from hypic_rag.data.scoring import exact_match, token_f1
from hypic_rag.data.synthetic import load_records, make_dataset

LADDER = [("full_recompute", 0), ("prefix_cache", 0), ("pic_addition", 0), ("pic_transition", 0),
          ("pic_transition_rope", 0), ("hypic", 0), ("hypic", 4), ("hypic", 8), ("hypic", 16), ("hypic", 32)]


def encode(record, tokenizer, template):
    segments = [tokenizer.encode(template.segment.format(title=d["title"], text=d["text"]), add_special_tokens=False)
                for d in record["ctxs"]]
    question = tokenizer.encode(template.question.format(question=record["question"]), add_special_tokens=False)
    return segments, question


def kl(reference, logits):
    return F.kl_div(logits.log_softmax(-1), reference.log_softmax(-1), log_target=True, reduction="sum").item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(SHIPPED_MODEL))
    p.add_argument("--questions", type=int, default=500)
    p.add_argument("--data", help="a .json/.jsonl file of {question, ctxs, answers} records (default: synthetic)")
    p.add_argument("--seed", type=int, default=4242)
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--docs", type=int, default=4, help="documents per synthetic question (gold + distractors)")
    p.add_argument("--out", default="bench/results")
    p.add_argument("--name", default="accuracy", help="stem of the result files")
    p.add_argument("--paragraphs", type=int, default=0,
                   help="long synthetic documents of this many paragraphs with distractors (0: short ones)")
    p.add_argument("--diagnose", type=int, default=50,
                   help="explain the table: mean per-layer hidden-state error to full recompute of every cached "
                        "rung over the first N questions (HypicExecutor.diagnose); 0: off")
    args = p.parse_args()
    if args.docs < 1:
        p.error("--docs must be at least 1")
    torch.manual_seed(0)
    model, tokenizer = load_model(args.model, device="cpu")
    template = PromptTemplate()
    records = load_records(args.data) if args.data else make_dataset(args.questions, seed=args.seed, num_docs=args.docs,
                                                                     paragraphs=args.paragraphs)
    records = records[: args.questions]
    prefix = [tokenizer.bos_token_id]
    executors = {
        (mode, w): HypicExecutor(model, tokenizer, ExecutorConfig(mode=mode, seam_tokens=w,
                                                                  max_new_tokens=args.max_new_tokens), prefix)
        for mode, w in LADDER
    }
    rows = {key: {"em": 0.0, "f1": 0.0, "kl": 0.0, "em_1hop": [0, 0], "em_2hop": [0, 0]} for key in LADDER}
    started = time.time()
    for i, record in enumerate(records):
        segments, question = encode(record, tokenizer, template)
        reference = None
        for key, ex in executors.items():
            result = ex.generate(segments, question)
            logits = result.first_token_logits
            if key == ("full_recompute", 0):
                reference = logits
            answer = first_line(result.text or "")
            em = exact_match(answer, record["answers"])
            row = rows[key]
            row["em"] += em
            row["f1"] += token_f1(answer, record["answers"])
            row["kl"] += kl(reference, logits)
            bucket = row["em_2hop" if record.get("hops") == 2 else "em_1hop"]
            bucket[0] += em
            bucket[1] += 1
        if (i + 1) % 50 == 0:
            print(f"{i + 1}/{len(records)} questions, {time.time() - started:.0f}s", flush=True)
    n = len(records)
    divergence = layer_divergence(executors, records[: args.diagnose], tokenizer, template) if args.diagnose else {}
    table = []
    for (mode, w), row in rows.items():
        table.append({
            "mode": mode, "seam": w, "exact_match": row["em"] / n, "token_f1": row["f1"] / n,
            "mean_first_token_kl": row["kl"] / n,
            "exact_match_single_hop": row["em_1hop"][0] / row["em_1hop"][1] if row["em_1hop"][1] else None,
            "exact_match_two_hop": row["em_2hop"][0] / row["em_2hop"][1] if row["em_2hop"][1] else None,
        })
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"model": str(Path(args.model).name), "questions": n, "seed": args.seed,
            "documents_per_question": None if args.data else args.docs,
            "single_hop": rows[LADDER[0]]["em_1hop"][1], "two_hop": rows[LADDER[0]]["em_2hop"][1],
            "seconds": round(time.time() - started, 1), "device": "cpu", "dtype": "float32"}
    (out / f"{args.name}.json").write_text(json.dumps({"meta": meta, "results": table,
                                                       "layer_divergence": divergence}, indent=1))
    source = f"{args.data}" if args.data else f"synthetic, {args.docs} document(s) each"
    lines = [f"# Accuracy by mode ({n} questions, {source}: {meta['single_hop']} single-hop, {meta['two_hop']} two-hop)",
             "", f"Model: {meta['model']}, greedy, {args.max_new_tokens} new tokens max, CPU fp32. "
             "KL = mean KL(full || mode) of the first answer token's distribution.", "",
             "| mode | seam | EM | F1 | EM single-hop | EM two-hop | mean KL to full |",
             "|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['mode']} | {r['seam']} | {r['exact_match']:.3f} | {r['token_f1']:.3f} | "
                     f"{_rate(r['exact_match_single_hop'])} | {_rate(r['exact_match_two_hop'])} | {r['mean_first_token_kl']:.2e} |")
    if divergence:
        names = list(divergence)
        lines += ["", f"Why: mean relative hidden-state error to full recompute at the question's tokens, per "
                      f"layer, over the first {min(args.diagnose, n)} questions (`HypicExecutor.diagnose`; "
                      "the layer kind in brackets).", "",
                  "| layer | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        kinds = divergence[names[0]]["kinds"]
        for layer, kind in enumerate(kinds):
            lines.append(f"| {layer} ({kind}) | " + " | ".join(f"{divergence[m]['mean'][layer]:.2e}" for m in names)
                         + " |")
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    plot(table, out / f"{args.name}.png")
    print("\n".join(lines))


def layer_divergence(executors, records, tokenizer, template) -> dict:
    """Per cached rung: the mean over `records` of each layer's relative hidden-state error."""
    out = {}
    for (mode, w), ex in executors.items():
        if not ex.config.mode.rung.segment_cache:
            continue
        runs = [ex.diagnose(*encode(record, tokenizer, template)) for record in records]
        name = mode if mode != "hypic" else f"hypic w={w}"
        out[name] = {"kinds": [l.kind for l in runs[0].layers],
                     "mean": [sum(r.layers[i].relative_error for r in runs) / len(runs)
                              for i in range(len(runs[0].layers))]}
    return out


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"  # no question of that kind in the set


def plot(table, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["mode"] if r["mode"] != "hypic" else f"hypic w={r['seam']}" for r in table]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    a.bar(labels, [r["exact_match"] for r in table], color="tab:blue")
    a.set_ylabel("exact match")
    a.set_ylim(0, 1)
    a.tick_params(axis="x", rotation=60)
    b.bar(labels, [max(r["mean_first_token_kl"], 1e-9) for r in table], color="tab:orange")
    b.set_yscale("log")
    b.set_ylabel("mean first-token KL to full recompute")
    b.tick_params(axis="x", rotation=60)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
