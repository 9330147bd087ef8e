"""Train the small Qwen3.5-style hybrid that hypic_rag ships (hypic_rag/assets/small_model).

A byte-level BPE tokenizer is trained with `tokenizers` on synthetic documents, then a Gated
DeltaNet + full attention model (3:1) learns to answer synthetic multi-document questions.
Each document is tokenized on its own, exactly as segments are at query time. The loss covers the
answer (weight 1) and the documents (weight `--lm-weight`); `--attention-supervision`,
`--copy-supervision` and `--two-hop-supervision` add the auxiliary losses of attention_supervision.py,
and `--block-attention` trains a share of the sequences under the mask cached segments are computed
with (block_attention.py). Checkpoints are written every `--save-every` steps as standard HF
checkpoints.

The shipped model, from scratch in 50 minutes on one core of a 2-core CPU (bench/results/from_scratch.md,
run W1):

    python -m hypic_rag.training --minutes 50 --threads 1 --lr 3e-3 --lm-weight 0.3 \
        --extra-questions 16 --question-pool all --min-docs 2 --short-docs-minutes 25 \
        --attention-gain 0.5 --copy-init 2 --attention-supervision 1 --supervised-layer 7 \
        --copy-supervision 1 --block-attention 0.5 --eval-questions 200 --save-every 300 --seed 2 \
        --out hypic_rag/assets/small_model

Then a second stage, from that checkpoint, for documents of several paragraphs with distractors (half
the batches: up to 8 documents of 2-5 paragraphs, ~3.7k tokens; the demo's retrieval size), 55 minutes
on one core: single-hop exact match under full recompute on 8 such documents went from 0.75 to 0.99,
on 4 short ones it stays at 0.99 (200 questions each):

    python -m hypic_rag.training --init hypic_rag/assets/small_model --minutes 55 --threads 1 --lr 1e-3 \
        --lm-weight 0.3 --extra-questions 8 --question-pool all --min-docs 2 --docs 8 --paragraphs 5 \
        --long-share 0.5 --long-batch 4 --attention-supervision 1 --supervised-layer 7 --copy-supervision 1 \
        --block-attention 0.5 --eval-questions 100 --save-every 100 --seed 11 --out OUT

On a CUDA machine the same script runs on the GPU (``--device auto``) with batches built by
``--data-workers`` processes so the GPU is not left waiting on tokenization.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch

import hypic_rag  # noqa: F401  (blocks fla on CPU before transformers' modeling modules load)
from hypic_rag.data.synthetic import context_text, make_dataset, question_text
from hypic_rag.training.attention_supervision import AnswerAttention, attention_layer_indices, supervise
from hypic_rag.training.block_attention import attention_masks
from hypic_rag.training.data import batches, prompt_and_answer
from hypic_rag.training.model_init import build_model, reset_attention

SPECIALS = ["<pad>", "<bos>", "<eos>"]


def train_tokenizer(vocab_size: int, seed: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = []
    for r in make_dataset(3000, seed=seed + 7):
        texts += [context_text(d) for d in r["ctxs"]] + [question_text(r["question"]) + " " + r["answers"][0]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")


@torch.no_grad()
def exact_match_rate(model, tokenizer, records) -> dict[str, float]:
    """Greedy full-recompute exact match: overall and split by single-/two-hop questions."""
    from hypic_rag.data.scoring import exact_match

    model.eval()
    device = next(model.parameters()).device
    hits = {1: [0, 0], 2: [0, 0]}
    for r in records:
        prompt, _ = prompt_and_answer(r, tokenizer)
        prompt = torch.tensor([prompt], device=device)
        out = model.generate(prompt, max_new_tokens=8, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)
        hit = exact_match(tokenizer.decode(out[0, prompt.shape[1]:], skip_special_tokens=True), r["answers"])
        hits[r.get("hops", 1)][0] += hit
        hits[r.get("hops", 1)][1] += 1
    model.train()
    total = sum(h for h, _ in hits.values()) / max(1, len(records))
    return {"em": total, "em_single_hop": hits[1][0] / max(1, hits[1][1]), "em_two_hop": hits[2][0] / max(1, hits[2][1])}


def learning_rate(peak: float, step: int, now: float, start: float, end: float) -> float:
    """100 warm-up steps, then a cosine from peak down to a tenth of it over the wall time start..end."""
    progress = min(1.0, max(0.0, (now - start) / max(end - start, 1e-9)))
    return peak * min(1.0, step / 100) * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="hypic_rag/assets/small_model")
    p.add_argument("--minutes", type=float, default=45.0)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--vocab", type=int, default=768)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--lm-weight", type=float, default=0.05)
    p.add_argument("--docs", type=int, default=4)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--save-every", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", help="continue from this checkpoint (its tokenizer and weights)")
    p.add_argument("--min-docs", type=int, default=1)
    p.add_argument("--extra-questions", type=int, default=3, help="further QA pairs per training sequence")
    p.add_argument("--question-pool", choices=("sampled", "all"), default="sampled",
                   help="extra pairs: one random fact per person, or every fact of every person")
    p.add_argument("--question-lm", action="store_true",
                   help="train the extra questions' tokens as text too (weight --lm-weight), not only their answers")
    p.add_argument("--short-docs-minutes", type=float, default=0.0,
                   help="curriculum: sequences hold 1-2 documents for this many minutes first")
    p.add_argument("--reset-attention", action="store_true",
                   help="with --init: re-initialise the full-attention layers before training (see reset_attention)")
    p.add_argument("--attention-gain", type=float, default=None,
                   help="fresh or reset attention: start the q/k norm gains at 1 + this (default 1.5; see sharpen_attention)")
    p.add_argument("--copy-init", type=float, default=0.0,
                   help="fresh or reset attention: start output projections as copies (see copy_init); 0: off")
    p.add_argument("--attention-supervision", type=float, default=0.0,
                   help="weight of the loss pointing one attention layer's answer queries at the answer's value "
                        "token (see attention_supervision.py); 0: off")
    p.add_argument("--copy-supervision", type=float, default=0.0,
                   help="with --attention-supervision: weight of the loss training that layer's output at the "
                        "answer query to read out as the value's first token; 0: off")
    p.add_argument("--supervised-layer", type=int, default=None,
                   help="the full-attention layer that loss supervises (default: the first)")
    p.add_argument("--two-hop-supervision", type=float, default=0.0,
                   help="with --attention-supervision: two-hop answers point --supervised-layer at the mentor's "
                        "value, and --first-hop-layer, with this weight for pointing and for copying, at the "
                        "mentor's name; two-hop records ask the mentor's other facts too; 0: off")
    p.add_argument("--first-hop-layer", type=int, default=None,
                   help="the full-attention layer --two-hop-supervision points at the mentor's name (default: "
                        "the first)")
    p.add_argument("--two-hop-fraction", type=float, default=0.25, help="share of two-hop training records")
    p.add_argument("--block-attention", type=float, default=0.0,
                   help="share of training sequences whose document tokens attend only to their own document "
                        "and the bos, as cached segments do (see block_attention.py); 0: off")
    p.add_argument("--paragraphs", type=int, default=0,
                   help="long documents: a --long-share of batches hold documents of 2 to this many paragraphs "
                        "with distractors (data.synthetic._long_document); 0: short documents only")
    p.add_argument("--long-share", type=float, default=0.5, help="with --paragraphs: share of long-document batches")
    p.add_argument("--long-batch", type=int, default=4, help="with --paragraphs: sequences per long-document batch")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    p.add_argument("--data-workers", type=int, default=0, help="processes that build batches (0: in the loop)")
    p.add_argument("--eval-questions", type=int, default=100)
    p.add_argument("--torch-kernels", action="store_true",
                   help="train through transformers' pure-torch recurrences even where fla is installed "
                        "(fla's Gated DeltaNet backward refuses Triton < 3.7.1 on Hopper GPUs)")
    args = p.parse_args()
    if args.reset_attention and not args.init:
        p.error("--reset-attention re-initialises part of an --init checkpoint; a fresh model needs no reset")
    if args.init and not args.reset_attention and (args.attention_gain is not None or args.copy_init):
        p.error("--attention-gain and --copy-init set how new attention weights start: train a fresh model "
                "(no --init) or add --reset-attention to re-initialise the checkpoint's attention")
    if (args.supervised_layer is not None or args.copy_supervision) and not args.attention_supervision:
        p.error("--supervised-layer and --copy-supervision act on the layer --attention-supervision trains; "
                "give that weight too")
    if (args.two_hop_supervision or args.first_hop_layer is not None) and not args.attention_supervision:
        p.error("--two-hop-supervision and --first-hop-layer supervise the mentor's hop beside the layer "
                "--attention-supervision trains; give that weight too")
    if args.first_hop_layer is not None and not args.two_hop_supervision:
        p.error("--first-hop-layer is the layer --two-hop-supervision trains; give that weight too")
    if not 0.0 <= args.block_attention <= 1.0:
        p.error(f"--block-attention is a share of sequences, between 0 and 1 (got {args.block_attention})")
    if not 0.0 <= args.two_hop_fraction <= 1.0:
        p.error(f"--two-hop-fraction is a share of records, between 0 and 1 (got {args.two_hop_fraction})")
    gain = 1.5 if args.attention_gain is None else args.attention_gain
    if args.torch_kernels:
        sys.modules["fla"] = None  # read when the modeling module is imported, i.e. at model build
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.init:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.init)
        model = AutoModelForCausalLM.from_pretrained(args.init, dtype=torch.float32, attn_implementation="sdpa")
        if args.reset_attention:
            reset_attention(model, args.seed, gain, args.copy_init)
    else:
        tokenizer = train_tokenizer(args.vocab, args.seed)
        model = build_model(tokenizer, args.hidden, args.layers, gain, args.copy_init)
    model.to(device)
    tokenizer.save_pretrained(out)  # workers load the tokenizer from here
    print(f"params: {sum(p.numel() for p in model.parameters())/1e6:.2f}M vocab {len(tokenizer)} on {device}", flush=True)
    supervised = first_hop = None
    if args.attention_supervision:
        layer = attention_layer_indices(model)[0] if args.supervised_layer is None else args.supervised_layer
        supervised = AnswerAttention(model, layer)
    if args.two_hop_supervision:
        hop = attention_layer_indices(model)[0] if args.first_hop_layer is None else args.first_hop_layer
        if hop == layer:
            p.error(f"--first-hop-layer {hop} is --supervised-layer too; the two hops need two layers")
        first_hop = AnswerAttention(model, hop)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.95))
    rng = random.Random(args.seed)
    held_out = make_dataset(args.eval_questions, seed=10_000 + args.seed, num_docs=args.docs,
                            paragraphs=args.paragraphs)
    stream = batches(args, tokenizer, out, rng)
    started = time.time()
    deadline = started + args.minutes * 60
    log = []
    step = 0
    model.train()
    while time.time() < deadline:
        batch = next(stream).to(device)
        ids, w = batch.ids, batch.weights
        mask = None
        if args.block_attention:
            blocked = torch.rand(len(ids)) < args.block_attention
            mask = attention_masks(model, batch.doc_of, blocked.to(device))
        hop_sup = None
        if supervised is None:
            result, pointing = model(input_ids=ids, attention_mask=mask), None
        else:
            armed = [(supervised, batch.pointers)] + ([(first_hop, batch.hop_pointers)] if first_hop else [])
            sup, *rest = supervise(model, ids, armed, mask)
            result, pointing, hop_sup = sup.output, sup.pointing, (rest[0] if rest else None)
        logits = result.logits[:, :-1]
        losses = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                                   reduction="none").view_as(w[:, 1:])
        loss = (losses * w[:, 1:]).sum() / w[:, 1:].sum()
        total = loss
        if pointing is not None:
            total = total + args.attention_supervision * pointing + args.copy_supervision * sup.copying
        if hop_sup is not None:
            total = total + args.two_hop_supervision * (hop_sup.pointing + hop_sup.copying)
        for g in opt.param_groups:
            g["lr"] = learning_rate(args.lr, step, time.time(), started, deadline)
        opt.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 100 == 0:
            extra = "" if pointing is None else f" pointing {pointing.item():.4f} copying {sup.copying.item():.4f}"
            if hop_sup is not None:
                extra += f" first hop {hop_sup.pointing.item():.4f}/{hop_sup.copying.item():.4f}"
            print(f"step {step} loss {loss.item():.4f}{extra} ({time.time() - started:.0f} s)", flush=True)
        if step % args.save_every == 0:
            em = exact_match_rate(model, tokenizer, held_out[:40])["em"]
            log.append({"step": step, "loss": loss.item(), "held_out_em_40": em,
                        **({} if pointing is None else {"pointing_loss": pointing.item(),
                                                        "copying_loss": sup.copying.item()}),
                        **({} if hop_sup is None else {"first_hop_pointing_loss": hop_sup.pointing.item(),
                                                       "first_hop_copying_loss": hop_sup.copying.item()})})
            print(f"step {step} held-out EM (40) {em:.3f}", flush=True)
            model.save_pretrained(out)
            tokenizer.save_pretrained(out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    em = exact_match_rate(model, tokenizer, held_out)
    log.append({"step": step, "final_held_out": em, "questions": len(held_out)})
    print(f"final held-out EM ({len(held_out)}, full recompute): {em}", flush=True)
    append_stage(out / "training_log.json", Path(args.init) / "training_log.json" if args.init else None,
                 {"args": vars(args), "device": str(device), "steps": step, "log": log})


def append_stage(path: Path, previous: Path | None, stage: dict) -> None:
    """training_log.json holds every stage that led to the checkpoint: the init's stages, then this one."""
    stages = []
    if previous is not None and previous.exists():
        stages = json.loads(previous.read_text()).get("stages", [])
    stage = {"stage": len(stages) + 1, "init": "previous stage" if previous else None, **stage}
    note = ("Stages continue the last saved checkpoint of the previous stage (python -m hypic_rag.training --init). "
            "Held-out EM is full-recompute greedy exact match on synthetic questions (25% two-hop).")
    path.write_text(json.dumps({"note": note, "stages": stages + [stage]}, indent=1))


if __name__ == "__main__":
    main()
