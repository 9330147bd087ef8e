"""`hypic-rag`: precompute a corpus, query a store, inspect a store, delete documents, run the demo.

Settings come from command-line flags, then a --config file (JSON or TOML with the same names as
the long flags, dashes or underscores), then the defaults.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tomllib
from pathlib import Path

from hypic_rag.errors import RequestError

DEFAULTS = {
    "seam": 8, "max_segment_tokens": 512, "batch_size": 16, "workers": 1, "k": 4, "mode": "hypic",
    "max_new_tokens": 32, "device_bytes": 512 * 2**20, "host_bytes": 2 * 2**30, "disk_bytes": 32 * 2**30,
    "system": "",
}


def _load_config(path: str | None) -> dict:
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise RequestError(f"config file not found: {p}")
    text = p.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text) if p.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(f"config file {p} is not valid {'TOML' if p.suffix == '.toml' else 'JSON'}: {exc}") from None
    return {k.replace("-", "_"): v for k, v in data.items()}


def _settings(args: argparse.Namespace) -> dict:
    merged = dict(DEFAULTS)
    merged.update(_load_config(getattr(args, "config", None)))
    merged.update({k: v for k, v in vars(args).items() if v is not None})
    return merged


def _store_config(s: dict):
    from hypic_rag.store.tiered import StoreConfig

    return StoreConfig(device_bytes=int(s["device_bytes"]), host_bytes=int(s["host_bytes"]),
                       disk_bytes=int(s["disk_bytes"]))


def cmd_precompute(s: dict) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from hypic_rag.api import SHIPPED_MODEL, HypicRAG
    from hypic_rag.config import ExecutorConfig, PromptTemplate

    console = Console(stderr=True)
    corpus = [Path(c) for c in s["corpus"]]
    missing = [str(c) for c in corpus if not c.exists()]
    if missing:
        raise RequestError(f"corpus path does not exist: {', '.join(missing)}")
    if Path(s["store"], "manifest.json").exists() and s.get("model") is None:
        rag = HypicRAG.from_store(s["store"])
    else:
        rag = HypicRAG.create(
            s["store"], model=s.get("model") or SHIPPED_MODEL, config=ExecutorConfig(seam_tokens=int(s["seam"])),
            template=PromptTemplate(system=s["system"]), store_config=_store_config(s),
            max_segment_tokens=int(s["max_segment_tokens"]),
        )
    if s.get("ray") is not None:  # "local" starts a cluster in this process; otherwise an address to join
        from hypic_rag.distributed.ray_prefill import RayConfig

        rag.use_ray(RayConfig(workers=int(s["workers"]), address=None if s["ray"] == "local" else s["ray"]))
    with Progress(TextColumn("[bold]precompute {task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console) as bar:
        split = bar.add_task("split (characters)", total=None)
        task = bar.add_task("segments", total=None)
        report = rag.ingest(corpus, batch_size=int(s["batch_size"]), workers=int(s["workers"]),
                            progress=lambda done, total: bar.update(task, completed=done, total=total),
                            split_progress=lambda done, total: bar.update(split, completed=done, total=total))
    for line in report.skipped_files:
        console.print(f"[yellow]skipped[/] {line}")
    console.print(
        f"{report.documents} documents ({report.documents_new} new, {report.documents_updated} updated, "
        f"{report.documents_unchanged} unchanged), {report.segments} segments ({report.new_segments} indexed now, "
        f"{report.segments_retired} retired): {report.entries_computed} entries computed, {report.entries_reused} "
        f"reused, {report.entries_retired} retired, {report.seconds:.1f}s"
    )
    rag.close()
    return 0


def cmd_query(s: dict) -> int:
    from hypic_rag.api import HypicRAG

    rag = HypicRAG.from_store(s["store"])
    stream = rag.stream(s["question"], k=int(s["k"]), mode=s["mode"], max_new_tokens=int(s["max_new_tokens"]))
    result = None
    print("answer: ", end="", flush=True)
    for item in stream:
        if isinstance(item, str):
            print(item, end="", flush=True)
        else:
            result = item
    print()
    for seg in result.segments:
        print(f"  [{seg.rank}] {seg.record.segment_id}  score={seg.score:.3f}")
    t = result.timings
    print(f"TTFT {t.ttft * 1000:.1f} ms (retrieval {result.retrieval_seconds * 1000:.1f} ms, load {t.load * 1000:.1f}, "
          f"miss precompute {t.precompute_misses * 1000:.1f}, compose {t.compose * 1000:.1f}, "
          + (f"seams + question {t.seam * 1000:.1f}" if t.prefill == 0 else
             f"seam {t.seam * 1000:.1f}, question prefill {t.prefill * 1000:.1f}")
          + f"); tier hits {result.tier_hits}")
    rag.close()
    return 0


def cmd_inspect(s: dict) -> int:
    from hypic_rag.api import HypicRAG

    rag = HypicRAG.from_store(s["store"], read_only=True)
    info = rag.info()
    print(f"store        {info.directory}")
    print(f"model        {info.model_path}")
    print(f"fingerprint  {info.fingerprint}")
    print(f"documents    {info.documents}")
    print(f"segments     {info.segments}")
    for tier in info.tiers:
        print(f"tier {tier.name:<12} entries {tier.entries:>6}  bytes {tier.used_bytes:>12}")
    rag.close()
    return 0


def cmd_delete(s: dict) -> int:
    from hypic_rag.api import HypicRAG

    with HypicRAG.from_store(s["store"]) as rag:
        report = rag.delete(s["doc_ids"])
    print(f"deleted {report.documents} documents ({report.segments} segments, {report.entries_retired} entries)")
    for doc_id in report.missing:
        print(f"not in the store: {doc_id}", file=sys.stderr)
    return 1 if report.missing else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hypic-rag", description="Segment-cached RAG for hybrid-attention LLMs")
    sub = p.add_subparsers(dest="command", required=True)

    pre = sub.add_parser("precompute", help="segment, cache and index a corpus into a store")
    pre.add_argument("corpus", nargs="+", help=".txt/.md/.jsonl files or directories")
    pre.add_argument("--model", help="HF checkpoint directory (default: the shipped small model)")
    pre.add_argument("--store", required=True)
    pre.add_argument("--seam", type=int)
    pre.add_argument("--max-segment-tokens", type=int)
    pre.add_argument("--batch-size", type=int)
    pre.add_argument("--workers", type=int, help="processes (or, with --ray, Ray actors) precomputing entries in parallel")
    pre.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                     help="precompute on Ray actors: a local cluster (no address) or a cluster address "
                          "('auto', 'ray://head:10001')")
    pre.add_argument("--system", help="system prompt cached once as the shared prefix")
    for tier in ("device", "host", "disk"):
        pre.add_argument(f"--{tier}-bytes", type=int)
    pre.add_argument("--config")

    q = sub.add_parser("query", help="answer a question from a store")
    q.add_argument("question")
    q.add_argument("--store", required=True)
    q.add_argument("--k", type=int)
    q.add_argument("--mode")
    q.add_argument("--max-new-tokens", type=int)
    q.add_argument("--config")

    ins = sub.add_parser("inspect", help="counts, bytes per tier and the model fingerprint of a store")
    ins.add_argument("--store", required=True)

    rm = sub.add_parser("delete", help="remove documents (their segments and unused cache entries) from a store")
    rm.add_argument("doc_ids", nargs="+", metavar="DOC_ID", help="document ids, as `inspect` lists them")
    rm.add_argument("--store", required=True)

    demo = sub.add_parser("demo", help="build a store from the shipped corpus and compare full recompute vs hypic")
    demo.add_argument("--store", help="store directory (default: a temporary one)")
    demo.add_argument("--questions", type=int, default=6)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # kernel-fallback notices are not for CLI users
    hf_logging.disable_progress_bar()
    try:
        if args.command == "demo":
            from hypic_rag.cli.demo import run_demo

            return run_demo(args.store, args.questions)
        settings = _settings(args)
        commands = {"precompute": cmd_precompute, "query": cmd_query, "inspect": cmd_inspect, "delete": cmd_delete}
        return commands[args.command](settings)
    except KeyboardInterrupt:
        print("hypic-rag: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, sqlite3.Error, UnicodeError) as exc:  # one line, naming the input or file
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"hypic-rag: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
