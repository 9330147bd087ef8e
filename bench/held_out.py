"""Accuracy on held-out conditions: 2, 4 and 8 documents, the gold document forced first and last,
on seeds never used for training or tuning (bench/used_seeds.json; a used seed is refused).

Per condition and rung: exact match, the gap to full recompute with a paired-bootstrap 95% interval
(the same questions resampled for both), how many questions full recompute gets right and the rung
wrong and the reverse, and the mean first-token KL(full || rung). Each (model, condition) is written
to its own JSON with every question's outcome, so conditions run separately (or in parallel
processes) and `--report` assembles the table and plot from whatever has been run.

    python bench/held_out.py --model hypic_rag/assets/small_model --conditions docs2,docs4 --out bench/results
    python bench/held_out.py --report --out bench/results        # held_out.md and held_out.png
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import time
from pathlib import Path

import numpy as np
import torch

import hypic_rag  # noqa: F401
from hypic_rag import ExecutorConfig, HypicExecutor
from hypic_rag.api import SHIPPED_MODEL, first_line, load_model
from hypic_rag.config import PromptTemplate
from hypic_rag.data.scoring import exact_match
from hypic_rag.data.synthetic import make_dataset

from accuracy import encode, kl  # bench/accuracy.py

USED_SEEDS = Path(__file__).with_name("used_seeds.json")
HELD_OUT_BASE = 1 << 30  # training draws its batch seeds below this (used_seeds.json)
# condition -> (documents per question, where the gold document(s) go, seed)
# (the seeds before 2026-12-05, HELD_OUT_BASE + 2/4/8/41/42, tuned hypic_adaptive: used_seeds.json)
CONDITIONS = {
    "docs2": (2, None, HELD_OUT_BASE + 1002),
    "docs4": (4, None, HELD_OUT_BASE + 1004),
    "docs8": (8, None, HELD_OUT_BASE + 1008),
    "gold_first": (4, "first", HELD_OUT_BASE + 1041),
    "gold_last": (4, "last", HELD_OUT_BASE + 1042),
}
# mode:seam[:budget]; a budget (hypic_adaptive's share of the documents' tokens recomputed) only for hypic_adaptive
RUNGS = ["full_recompute:0", "pic_transition_rope:0", "hypic:0", "hypic:8", "hypic:16", "hypic:32",
         "hypic_adaptive:8:0.15"]


def refuse_used(seed: int) -> None:
    used = json.loads(USED_SEEDS.read_text())
    for r in used["ranges"]:
        if r["from"] <= seed < r["to"]:
            raise SystemExit(f"seed {seed} lies in a used range ({r['use']}); pick one outside it")
    for s in used["seeds"]:
        if s["seed"] == seed:
            raise SystemExit(f"seed {seed} was used: {s['use']}")


def place_gold(record: dict, where: str | None) -> dict:
    if where is None:
        return record
    gold = [c for c in record["ctxs"] if c["title"] in record["answered_by"]]
    rest = [c for c in record["ctxs"] if c["title"] not in record["answered_by"]]
    return {**record, "ctxs": gold + rest if where == "first" else rest + gold}


def executor_config(rung: str, max_new_tokens: int) -> ExecutorConfig:
    mode, seam, *budget = rung.split(":")
    extra = {"recompute_budget": float(budget[0])} if budget else {}
    return ExecutorConfig(mode=mode, seam_tokens=int(seam), max_new_tokens=max_new_tokens, **extra)


def run_condition(model_path: str, condition: str, questions: int, max_new_tokens: int, rungs: list[str]) -> dict:
    """Every question of `condition` through full recompute (first: the KL reference) and `rungs`;
    per question and rung the exact match, the first-token KL and the document tokens recomputed
    with their real context."""
    docs, where, seed = CONDITIONS[condition]
    refuse_used(seed)
    model, tokenizer = load_model(model_path, device="cpu")
    template = PromptTemplate()
    prefix = [tokenizer.bos_token_id]
    rungs = ["full_recompute:0"] + [r for r in rungs if not r.startswith("full_recompute")]
    executors = {r: HypicExecutor(model, tokenizer, executor_config(r, max_new_tokens), prefix) for r in rungs}
    outcomes = {r: {"em": [], "kl": [], "recomputed": [], "tokens": [], "ttft": []} for r in rungs}
    hops = []
    started = time.time()
    for i, record in enumerate(make_dataset(questions, seed=seed, num_docs=docs)):
        record = place_gold(record, where)
        segments, question = encode(record, tokenizer, template)
        reference = None
        hops.append(record["hops"])
        for rung, ex in executors.items():
            result = ex.generate(segments, question)
            if reference is None:
                reference = result.first_token_logits
            got = outcomes[rung]
            got["em"].append(exact_match(first_line(result.text or ""), record["answers"]))
            got["kl"].append(kl(reference, result.first_token_logits))
            documents = sum(len(s) for s in segments)
            got["recomputed"].append(len(prefix) + documents - result.cached_tokens)
            got["tokens"].append(documents)
            got["ttft"].append(result.timings.ttft)
        if (i + 1) % 50 == 0:
            print(f"{condition}: {i + 1}/{questions} questions, {time.time() - started:.0f}s", flush=True)
    return {"model": Path(model_path).name, "condition": condition, "documents": docs, "gold": where, "seed": seed,
            "questions": questions, "hops": hops, "outcomes": outcomes,
            "seconds": round(time.time() - started, 1)}


def merge(earlier: dict, run: dict) -> dict:
    """`run`'s rungs added to an earlier run of the same questions; full recompute must agree."""
    same = ("model", "condition", "seed", "questions", "hops")
    if any(earlier[k] != run[k] for k in same):
        raise SystemExit(f"{run['condition']}: the earlier run holds other questions; move it aside to rerun")
    if earlier["outcomes"]["full_recompute:0"]["em"] != run["outcomes"]["full_recompute:0"]["em"]:
        raise SystemExit(f"{run['condition']}: full recompute answered differently from the earlier run")
    return {**earlier, "outcomes": {**earlier["outcomes"], **run["outcomes"]},
            "seconds": earlier["seconds"] + run["seconds"]}


def bootstrap_gap(full: np.ndarray, mode: np.ndarray, resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% interval of mean(mode) - mean(full) over questions resampled in pairs."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(full), (resamples, len(full)))
    gaps = (mode[idx] - full[idx]).mean(axis=1)
    return float(np.percentile(gaps, 2.5)), float(np.percentile(gaps, 97.5))


@functools.lru_cache(maxsize=None)
def segment_lengths(model: str, seed: int, questions: int, documents: int, gold: str | None) -> tuple[int, ...]:
    """Token length of every document segment of a run's questions, rebuilt from its seed with the
    model's tokenizer (no model run): once per run, whatever the number of rungs."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(Path(hypic_rag.__file__).parent / "assets" / model)
    lengths: list[int] = []
    for record in make_dataset(questions, seed=seed, num_docs=documents):
        segments, _ = encode(place_gold(record, gold), tokenizer, PromptTemplate())
        lengths += [len(s) for s in segments]
    return tuple(lengths)


def recomputed_fraction(run: dict, rung: str) -> float:
    """Share of the documents' tokens a rung recomputes with their real context (the question itself
    is prefilled by every rung): 1 for full recompute, 0 for the zero-seam rungs,
    sum(min(w, segment length)) / sum(segment length) for a seam of w (every segment's seam, the
    first one's too)."""
    got = run["outcomes"][rung]
    if got.get("recomputed"):  # measured per question (runs since hypic_adaptive)
        return sum(got["recomputed"]) / sum(got["tokens"])
    mode, width = rung.split(":")[0], int(rung.split(":")[1])
    if mode == "full_recompute":
        return 1.0
    if width == 0:
        return 0.0
    lengths = segment_lengths(run["model"], run["seed"], run["questions"], run["documents"], run["gold"])
    return sum(min(width, n) for n in lengths) / sum(lengths)


def ttft_vs_full(run: dict, rung: str) -> float | None:
    """Mean time to first token over full recompute's, both measured in the same run (the rungs
    interleaved question by question); None for a rung run before TTFT was recorded."""
    got, full = run["outcomes"][rung].get("ttft"), run["outcomes"]["full_recompute:0"].get("ttft")
    if not got or not full or len(got) != len(full):
        return None
    return float(np.mean(got) / np.mean(full))


def summarise(run: dict) -> list[dict]:
    full = np.asarray(run["outcomes"]["full_recompute:0"]["em"], dtype=float)
    single = np.asarray(run["hops"]) == 1
    rows = []
    for name, got in run["outcomes"].items():
        em = np.asarray(got["em"], dtype=float)
        low, high = bootstrap_gap(full, em)
        rows.append({"model": run["model"], "condition": run["condition"], "rung": name, "em": em.mean(),
                     "em_single_hop": em[single].mean(), "gap": em.mean() - full.mean(), "gap_low": low,
                     "gap_high": high, "full_right_mode_wrong": int(((full == 1) & (em == 0)).sum()),
                     "mode_right_full_wrong": int(((full == 0) & (em == 1)).sum()),
                     "kl": float(np.mean(got["kl"])), "questions": len(em),
                     "recomputed": recomputed_fraction(run, name), "ttft_vs_full": ttft_vs_full(run, name)})
    return rows


def label(rung: str) -> str:
    """'hypic w=8' for a seam rung, 'hypic_adaptive w=8 <=15%' with its budget, the mode alone otherwise."""
    mode, seam, *budget = rung.split(":")
    if not mode.startswith("hypic"):
        return mode
    return f"{mode} w={seam}" + (f" <={100 * float(budget[0]):.0f}%" if budget else "")


def report(out: Path) -> None:
    runs = [json.loads(p.read_text()) for p in sorted((out / "held_out").glob("*/*.json"))]
    rows = [r for run in runs for r in summarise(run)]
    lines = ["# Held-out accuracy: conditions and seeds never used for training or tuning", "",
             "`python bench/held_out.py` (seeds and conditions in the script; used seeds in bench/used_seeds.json). "
             "EM over all questions (about a quarter two-hop); gap = rung EM - full recompute EM, in points, with a "
             "paired-bootstrap 95% interval (10,000 resamples); F>R: full right and the rung wrong, R>F: the "
             "reverse; KL: mean first-token KL(full || rung); recomputed: share of the documents' tokens the rung "
             "recomputes with their real context (the question is prefilled by every rung); TTFT / full: mean time to "
             "first token over full recompute's on this CPU, one torch thread, the rungs interleaved question by "
             "question (blank: a rung last run before TTFT was recorded).", "",
             "| model | condition | rung | EM | EM single-hop | gap (95% CI), points | F>R | R>F | KL | recomputed "
             "| TTFT / full |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['condition']} | {label(r['rung'])} "
                     f"| {r['em']:.3f} | {r['em_single_hop']:.3f} | {100 * r['gap']:+.1f} ({100 * r['gap_low']:+.1f}, "
                     f"{100 * r['gap_high']:+.1f}) | {r['full_right_mode_wrong']} | {r['mode_right_full_wrong']} | "
                     f"{r['kl']:.2e} | {100 * r['recomputed']:.1f}% | "
                     f"{'' if r['ttft_vs_full'] is None else format(r['ttft_vs_full'], '.2f')} |")
    (out / "held_out.md").write_text("\n".join(lines) + "\n")
    (out / "held_out.json").write_text(json.dumps(rows, indent=1))
    plot(rows, out / "held_out.png")
    print("\n".join(lines))


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(2, len(models), figsize=(7 * len(models), 9), squeeze=False)
    for ax, model in zip(axes[1], models):  # KL against the share recomputed: fixed seams as lines
        mine = [r for r in rows if r["model"] == model and r["rung"] != "full_recompute:0"]
        for k, condition in enumerate(sorted({r["condition"] for r in mine})):
            color = f"C{k}"
            seams = sorted((r for r in mine if r["condition"] == condition and r["rung"].startswith("hypic:")),
                           key=lambda r: r["recomputed"])
            ax.plot([100 * r["recomputed"] for r in seams], [r["kl"] for r in seams], "o-", color=color,
                    label=f"{condition}: hypic w=0/8/16/32")
            for r in mine:
                if r["condition"] == condition and r["rung"].startswith("hypic_adaptive"):
                    ax.plot(100 * r["recomputed"], r["kl"], "*", markersize=12, color=color,
                            label=f"{condition}: {label(r['rung'])}")
        ax.set_yscale("log")
        ax.set_xlabel("documents' tokens recomputed (%)")
        ax.set_ylabel("mean first-token KL(full || rung)")
        ax.set_title(f"{model}: KL against recompute")
        ax.legend(fontsize=6, ncol=2)
    for ax, model in zip(axes[0], models):
        mine = [r for r in rows if r["model"] == model and r["rung"] != "full_recompute:0"]
        conditions = sorted({r["condition"] for r in mine})
        rungs = list(dict.fromkeys(r["rung"] for r in mine))
        width = 0.8 / len(rungs)
        for j, rung in enumerate(rungs):
            got = [next((r for r in mine if r["condition"] == c and r["rung"] == rung), None) for c in conditions]
            x = np.arange(len(conditions))[[g is not None for g in got]] + j * width  # a rung not run: no bar
            got = [g for g in got if g is not None]
            gap = np.array([100 * r["gap"] for r in got])
            err = np.array([[100 * (r["gap"] - r["gap_low"]) for r in got], [100 * (r["gap_high"] - r["gap"]) for r in got]])
            ax.bar(x, gap, width, yerr=err, capsize=2, label=label(rung))
        ax.axhline(-1, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xticks(np.arange(len(conditions)) + 0.4 - width / 2, conditions)
        ax.set_ylabel("EM gap to full recompute (points, 95% CI)")
        ax.set_title(model)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(SHIPPED_MODEL))
    p.add_argument("--conditions", default=",".join(CONDITIONS))
    p.add_argument("--questions", type=int, default=500)
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rungs", default=",".join(RUNGS),
                   help="mode:seam_tokens[:recompute_budget], comma-separated; added to an existing run of the condition")
    p.add_argument("--report", action="store_true", help="only assemble held_out.md/.png from the runs in --out")
    p.add_argument("--out", default="bench/results")
    args = p.parse_args()
    out = Path(args.out)
    if not args.report:
        torch.set_num_threads(args.threads)
        random.seed(0)
        rungs = args.rungs.split(",")
        for r in rungs:
            executor_config(r, args.max_new_tokens)  # a bad rung fails here, not after a condition has run
        for condition in args.conditions.split(","):
            if condition not in CONDITIONS:
                p.error(f"unknown condition {condition!r}; choose from {', '.join(CONDITIONS)}")
            run = run_condition(args.model, condition, args.questions, args.max_new_tokens, rungs)
            target = out / "held_out" / run["model"] / f"{condition}.json"
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                run = merge(json.loads(target.read_text()), run)
            target.write_text(json.dumps(run))
    report(out)


if __name__ == "__main__":
    main()
