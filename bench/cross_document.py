"""How much a document's tokens depend on the documents before it, per checkpoint.

A cached segment is computed after the shared prefix alone, so what its tokens would have taken from
earlier documents under full recompute is what hypic's composition and seams have to make up. Two
paths carry it in a Qwen3.5-style model:

- full attention: the head-averaged weight a document's tokens put on earlier documents (not on the
  bos), averaged over the tokens of every document after the first;
- Gated DeltaNet / KDA: the share of the state from before a document that survives its first 16
  tokens, exp(sum of the decay gates the layer hands its recurrence, read by capture_recurrences as
  precompute reads them), the largest over heads, averaged over documents after the first.

    python bench/cross_document.py CHECKPOINT [CHECKPOINT ...] --out bench/results

Writes cross_document.{md,json} into --out (synthetic four-document records, seed 77).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import hypic_rag  # noqa: F401
from hypic_rag.data.synthetic import context_text, make_dataset
from hypic_rag.models.registry import linear_mixer, model_spec
from hypic_rag.models.specs import MixerFamily
from hypic_rag.ops.capture import capture_recurrences


def measure(path: str, records: list[dict], window: int = 16) -> dict:
    """One checkpoint's row: per full-attention layer the weight on earlier documents, per linear layer
    the share of the earlier state left after `window` tokens of a document (keys are layer indices)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    spec = model_spec(model)
    if not spec.attention or any(layer.family != MixerFamily.GATED_DELTA for layer in spec.linear):
        raise ValueError(f"{path}: expected full attention beside Gated DeltaNet / KDA layers "
                         f"(qwen3_5, qwen3_next, kimi_linear); got {spec.model_type}")
    mixers = {layer.layer_idx: linear_mixer(model, layer.layer_idx) for layer in spec.linear}
    weight = {layer.layer_idx: [] for layer in spec.attention}
    survive = {layer.layer_idx: [] for layer in spec.linear}
    for r in records:
        ids, starts = [tokenizer.bos_token_id], []
        for doc in r["ctxs"]:
            starts.append(len(ids))
            ids += tokenizer.encode(context_text(doc), add_special_tokens=False)
        ends = starts[1:] + [len(ids)]
        with torch.no_grad(), capture_recurrences(model, spec.linear, mixers) as calls:
            out = model(input_ids=torch.tensor([ids]), output_attentions=True)
        for layer, heads in zip(spec.attention, out.attentions):  # one entry per full-attention layer
            w = heads[0].mean(0)  # [T, T], head mean
            weight[layer.layer_idx] += [w[a:b, 1:a].sum(-1).mean().item() for a, b in zip(starts[1:], ends[1:])]
        for i, v in survive.items():
            g = calls[i].arguments["g"][0].float()  # [T, heads(, channels)] log decays
            v += [g[a:a + window].sum(0).exp().max().item() for a in starts[1:]]
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    return {"checkpoint": path, "window": window,
            "attention_weight_on_earlier_documents": {i: mean(v) for i, v in weight.items()},
            "linear_state_surviving": {i: mean(v) for i, v in survive.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--records", type=int, default=20)
    p.add_argument("--out", default="bench/results")
    args = p.parse_args()
    if args.records < 1:
        p.error("--records must be at least 1")
    for c in args.checkpoints:
        if not (Path(c) / "config.json").is_file():
            p.error(f"{c} is not a checkpoint folder (no config.json); pass a saved model such as "
                    "hypic_rag/assets/small_model")
    records = make_dataset(args.records, seed=77, num_docs=4)
    rows = [measure(c, records) for c in args.checkpoints]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cross_document.json").write_text(json.dumps({"records": args.records, "rows": rows}, indent=1))
    lines = [f"# Cross-document dependence ({args.records} four-document records, seed 77)", "",
             "Attention: head-averaged weight of a document's tokens on earlier documents (bos excluded). "
             f"Linear: share of the state from before a document left after its first {rows[0]['window']} tokens "
             "(max over heads).",
             "", "| checkpoint | attention layer: weight on earlier documents | linear layer: state surviving |",
             "|---|---|---|"]
    for row in rows:
        att = ", ".join(f"{i}: {v:.3f}" for i, v in row["attention_weight_on_earlier_documents"].items())
        lin = ", ".join(f"{i}: {v:.1e}" for i, v in row["linear_state_surviving"].items())
        lines.append(f"| {row['checkpoint']} | {att} | {lin} |")
    (out / "cross_document.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
