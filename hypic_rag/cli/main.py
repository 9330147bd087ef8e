"""`hypic-rag`: precompute a corpus, query a store, diagnose a rung, inspect a store, delete documents,
run the demo.

Settings come from command-line flags, then a --config file (JSON, TOML or YAML with the long
flags' names, dashes or underscores; unknown names refused), then the defaults (cli/settings.py).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import threading

from hypic_rag.cli.settings import defaults_help, settings

MODES = ("full_recompute", "prefix_cache", "pic_addition", "pic_transition", "pic_transition_rope", "hypic",
         "hypic_adaptive")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hypic_rag")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hypic-rag", description="Segment-cached RAG for hybrid-attention LLMs")
    p.add_argument("--version", action="version", version=f"hypic-rag {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    h = defaults_help

    pre = sub.add_parser("precompute", help="segment, cache and index a corpus into a store")
    pre.add_argument("corpus", nargs="+", help=".txt/.md/.jsonl files or directories")
    pre.add_argument("--store", required=True, help="store directory (created if missing)")
    pre.add_argument("--model", help="HF checkpoint directory (default: the shipped small model; for an existing "
                                     "store: the one its manifest records, or where it moved)")
    pre.add_argument("--seam", type=int, help=h("seam tokens recomputed at each segment boundary", "seam"))
    pre.add_argument("--max-segment-tokens", type=int, help=h("token budget of one segment", "max_segment_tokens"))
    pre.add_argument("--batch-size", type=int, help=h("segments per committed batch", "batch_size"))
    pre.add_argument("--workers", type=int,
                     help=h("processes (or, with --ray, Ray actors) precomputing entries in parallel", "workers"))
    pre.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                     help="precompute on Ray actors: a local cluster (no address) or a cluster address "
                          "('auto', 'ray://head:10001') (default: off)")
    pre.add_argument("--system", help="system prompt cached once as the shared prefix (default: none)")
    for tier in ("device", "host", "disk"):
        pre.add_argument(f"--{tier}-bytes", type=int, help=h(f"byte budget of the {tier} tier", f"{tier}_bytes"))
    pre.add_argument("--redis", metavar="URL", help="a Redis tier shared by every process pointing at it: "
                                                    "redis://host:6379/0, or env:VAR to read the URL from $VAR "
                                                    "(default: none)")
    pre.add_argument("--redis-namespace", help="key prefix of this corpus' entries in Redis (default: hypic_rag)")
    pre.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port while running "
                                                      "(default: off)")
    pre.add_argument("--index-kind", choices=["auto", "flat", "ivf_flat", "ivf_pq"],
                     help="FAISS index type of the segment embeddings; auto: exact below 100k segments, IVF-Flat "
                          "above, IVF-PQ from 2M (default: auto)")
    pre.add_argument("--config", help="JSON, TOML or YAML file of settings (default: none)")

    q = sub.add_parser("query", help="answer a question from a store")
    q.add_argument("question")
    q.add_argument("--store", required=True, help="store directory")
    q.add_argument("--model", help="the store's checkpoint where it moved (default: the manifest's path)")
    q.add_argument("--k", type=int, help=h("segments retrieved", "k"))
    q.add_argument("--mode", choices=MODES, help=h("rung of the ablation ladder", "mode"))
    q.add_argument("--max-new-tokens", type=int, help=h("tokens generated at most", "max_new_tokens"))
    q.add_argument("--recompute-budget", type=float,
                   help=h("hypic_adaptive: share of the segments' tokens recomputed, seams included", "recompute_budget"))
    q.add_argument("--json", action="store_true", default=None, help="print the result as JSON (default: text)")
    q.add_argument("--config", help="JSON, TOML or YAML file of settings (default: none)")

    dg = sub.add_parser("diagnose", help="where a cached rung departs from full recompute for one question: "
                                         "each layer's relative hidden-state error")
    dg.add_argument("question")
    dg.add_argument("--store", required=True, help="store directory")
    dg.add_argument("--model", help="the store's checkpoint where it moved (default: the manifest's path)")
    dg.add_argument("--k", type=int, help=h("segments retrieved", "k"))
    dg.add_argument("--mode", choices=MODES[2:], help=h("cached rung compared with full recompute", "mode"))
    dg.add_argument("--recompute-budget", type=float,
                    help=h("hypic_adaptive: share of the segments' tokens recomputed, seams included", "recompute_budget"))
    dg.add_argument("--threshold", type=float, help=h("relative error that marks a layer as diverged", "threshold"))
    dg.add_argument("--json", action="store_true", default=None, help="print as JSON (default: a table)")
    dg.add_argument("--config", help="JSON, TOML or YAML file of settings (default: none)")

    ins = sub.add_parser("inspect", help="counts, bytes, usage counters and the fingerprint of a store "
                                         "(without loading its model)")
    ins.add_argument("--store", required=True, help="store directory")
    ins.add_argument("--json", action="store_true", default=None, help="print as JSON (default: text)")

    rm = sub.add_parser("delete", help="remove documents (their segments and unused cache entries) from a store")
    rm.add_argument("doc_ids", nargs="+", metavar="DOC_ID", help="document ids (a file's full path, a JSONL id)")
    rm.add_argument("--store", required=True, help="store directory")
    rm.add_argument("--model", help="the store's checkpoint where it moved (default: the manifest's path)")

    demo = sub.add_parser("demo", help="build a store from the shipped corpus and compare full recompute vs hypic")
    demo.add_argument("--store", help="store directory (default: a temporary one)")
    demo.add_argument("--questions", type=int, default=8, help="questions asked (default: 8, all of them)")
    demo.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                      help="where the model runs (default: auto, CUDA when present)")
    return p


def _allowed(parser: argparse.ArgumentParser, command: str) -> set[str]:
    """The settings a command's --config may hold: its optional flags' names."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return {a.dest for a in sub._actions if a.option_strings and a.dest not in ("help", "config")}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # kernel-fallback notices are not for CLI users
        hf_logging.disable_progress_bar()
        if args.command == "demo":
            from hypic_rag.cli.demo import run_demo

            return run_demo(args.store, args.questions, args.device)
        from hypic_rag.cli.commands import COMMANDS

        merged, explicit = settings(args, _allowed(parser, args.command))
        return COMMANDS[args.command](merged, explicit)
    except KeyboardInterrupt:
        print("hypic-rag: interrupted", file=sys.stderr)
        if threading.active_count() > 1:  # a worker thread is inside torch: interpreter teardown would abort
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)  # committed work is safe: every store write is atomic (the SIGKILL test)
        return 130
    except (ValueError, OSError, sqlite3.Error, UnicodeError) as exc:  # one line, naming the input or file
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"hypic-rag: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
