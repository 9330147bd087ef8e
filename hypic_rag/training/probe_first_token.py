"""Where a small-model checkpoint stands on copying: first-answer-token accuracy per kind of fact.

For single-hop synthetic questions (seed 777) with N documents, the share whose first answer token is
the model's argmax after the question (full recompute), split by kind of fact, and how many misses are
another person's value of the same kind (the model found the kind of fact but not the person). Also
how often the model continues the asked person's name inside the question once its first token is
read: a lookup of that person's document by name, which the answer needs too.

    python -m hypic_rag.training.probe_first_token CHECKPOINT --docs 1 4 --questions 60
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

import torch

from hypic_rag.data.synthetic import make_dataset
from hypic_rag.training.data import prompt_and_answer


@torch.no_grad()
def probe(model, tokenizer, num_docs: int, questions: int) -> tuple[str, str]:
    """(first-answer-token line, name-lookup line); one forward per question serves both."""
    records = [r for r in make_dataset(questions * 2, seed=777, num_docs=num_docs) if r.get("hops", 1) == 1][:questions]
    hits = collections.defaultdict(lambda: [0, 0])
    misses = same_kind = 0
    name_hits = name_total = 0
    for r in records:
        kind = re.match(r"What is the (.*) of", r["question"]).group(1)
        prompt, answer = prompt_and_answer(r, tokenizer)
        preds = model(input_ids=torch.tensor([prompt])).logits[0].argmax(-1)
        target, pred = answer[0], preds[-1].item()
        hits[kind][0] += pred == target
        hits[kind][1] += 1
        if pred != target:
            misses += 1
            others = [qa["answer"] for qa in r["all_qa"] if qa["question"].startswith(f"What is the {kind} of")]
            same_kind += pred in {tokenizer.encode(" " + a, add_special_tokens=False)[0] for a in others}
        name = tokenizer.encode(" " + r["question"].rsplit(" of ", 1)[1].rstrip("?"), add_special_tokens=False)
        start = max(i for i in range(len(prompt) - len(name)) if prompt[i:i + len(name)] == name)  # the question's
        name_hits += sum(int(preds[start + k - 1].item() == prompt[start + k]) for k in range(1, len(name)))
        name_total += len(name) - 1
    total = sum(h for h, _ in hits.values()) / max(1, len(records))
    kinds = " ".join(f"{k}={h}/{n}" for k, (h, n) in sorted(hits.items()))
    return (f"docs {num_docs}: first-token accuracy {total:.3f} ({len(records)} questions) {kinds}; "
            f"misses that are another person's value of the same kind: {same_kind}/{misses}",
            f"docs {num_docs}: the asked name's later tokens in the question predicted {name_hits}/{name_total} = "
            f"{name_hits / max(1, name_total):.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--docs", type=int, nargs="+", default=[1, 4])
    p.add_argument("--questions", type=int, default=60)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if min(args.docs) < 1 or args.questions < 1:
        p.error("--docs and --questions take positive numbers (e.g. --docs 1 4 --questions 60)")
    if not (Path(args.checkpoint) / "config.json").is_file():
        p.error(f"{args.checkpoint} is not a checkpoint folder (no config.json); pass one that "
                "hypic_rag.training wrote, e.g. hypic_rag/assets/small_model")
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint)
    model = AutoModelForCausalLM.from_pretrained(args.checkpoint, dtype=torch.float32).eval()
    for n in args.docs:
        print(*probe(model, tokenizer, n, args.questions), sep="\n", flush=True)


if __name__ == "__main__":
    main()
