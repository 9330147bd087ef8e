"""How much a document's tokens depend on the documents before it, per checkpoint.

A cached segment is computed after the shared prefix alone, so what its tokens would have taken from
earlier documents under full recompute is what hypic's composition and seams have to make up. Two
paths carry it in a Qwen3.5-style model:

- full attention: the head-averaged weight a document's tokens put on earlier documents (not on the
  bos), averaged over the tokens of every document after the first;
- Gated DeltaNet: the share of the state from before a document that survives its first 16 tokens,
  exp(sum of the decay gates), the largest over heads, averaged over documents after the first.

    python bench/cross_document.py CHECKPOINT [CHECKPOINT ...] --out bench/results

Writes cross_document.{md,json} into --out (synthetic four-document records, seed 77).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import hypic_rag  # noqa: E402,F401
from hypic_rag.data.synthetic import context_text, make_dataset  # noqa: E402


def measure(path: str, records: list[dict], window: int = 16) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    layers = model.model.layers
    attention = [i for i, layer in enumerate(layers) if getattr(layer, "self_attn", None) is not None]
    linear = [i for i, layer in enumerate(layers) if getattr(layer, "linear_attn", None) is not None]
    if not attention or not all(hasattr(layers[i].linear_attn, "A_log") for i in linear):
        raise ValueError(f"{path}: expected a Gated DeltaNet + full attention model (qwen3_5 / qwen3_next)")
    decays: dict[int, torch.Tensor] = {}

    def record(i):
        def hook(module, args, kwargs, output):
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            decays[i] = (-module.A_log.float().exp() * F.softplus(module.in_proj_a(hidden).float() + module.dt_bias))[0]
        return hook

    handles = [layers[i].linear_attn.register_forward_hook(record(i), with_kwargs=True) for i in linear]
    weight = {i: [] for i in attention}
    survive = {i: [] for i in linear}
    try:
        for r in records:
            ids, starts = [tokenizer.bos_token_id], []
            for doc in r["ctxs"]:
                starts.append(len(ids))
                ids += tokenizer.encode(context_text(doc), add_special_tokens=False)
            ends = starts[1:] + [len(ids)]
            with torch.no_grad():
                out = model(input_ids=torch.tensor([ids]), output_attentions=True)
            for j, i in enumerate(attention):
                w = out.attentions[j][0].mean(0)  # [T, T], head mean
                weight[i] += [w[a:b, 1:a].sum(-1).mean().item() for a, b in zip(starts[1:], ends[1:])]
            for i in linear:
                g = decays[i]
                survive[i] += [g[a:a + window].sum(0).exp().max().item() for a in starts[1:]]
    finally:
        for h in handles:
            h.remove()
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    return {"checkpoint": path, "attention_weight_on_earlier_documents": {i: mean(v) for i, v in weight.items()},
            f"linear_state_surviving_{window}_tokens": {i: mean(v) for i, v in survive.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--records", type=int, default=20)
    p.add_argument("--out", default="bench/results")
    args = p.parse_args()
    if args.records < 1:
        p.error("--records must be at least 1")
    records = make_dataset(args.records, seed=77, num_docs=4)
    rows = [measure(c, records) for c in args.checkpoints]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cross_document.json").write_text(json.dumps({"records": args.records, "rows": rows}, indent=1))
    lines = [f"# Cross-document dependence ({args.records} four-document records, seed 77)", "",
             "Attention: head-averaged weight of a document's tokens on earlier documents (bos excluded). "
             "Linear: share of the state from before a document left after its first 16 tokens (max over heads).",
             "", "| checkpoint | attention layer: weight on earlier documents | linear layer: state surviving |",
             "|---|---|---|"]
    for row in rows:
        att = ", ".join(f"{i}: {v:.3f}" for i, v in row["attention_weight_on_earlier_documents"].items())
        lin = ", ".join(f"{i}: {v:.1e}" for i, v in row["linear_state_surviving_16_tokens"].items())
        lines.append(f"| {row['checkpoint']} | {att} | {lin} |")
    (out / "cross_document.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
