"""The `hypic-rag` subcommands over merged settings (cli/settings.py); each returns an exit status."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hypic_rag.errors import RequestError


def _store_config(s: dict):
    from hypic_rag.store.tiered import StoreConfig

    from hypic_rag.index.vector_index import IndexConfig

    return StoreConfig(device_bytes=int(s["device_bytes"]), host_bytes=int(s["host_bytes"]),
                       disk_bytes=int(s["disk_bytes"]), redis_url=s.get("redis"),
                       redis_namespace=s.get("redis_namespace") or "hypic_rag",
                       index=IndexConfig(kind=s.get("index_kind") or "auto"))


def cmd_precompute(s: dict, explicit: set[str]) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from hypic_rag.api import SHIPPED_MODEL, HypicRAG
    from hypic_rag.cli.settings import check_store_fixed
    from hypic_rag.config import ExecutorConfig, PromptTemplate
    from hypic_rag.store.manifest import Manifest

    console = Console(stderr=True)
    corpus = [Path(c) for c in s["corpus"]]
    missing = [str(c) for c in corpus if not c.exists()]
    if missing:
        raise RequestError(f"corpus path does not exist: {', '.join(missing)}")
    if Path(s["store"], "manifest.json").exists():
        manifest = Manifest.read(s["store"])
        check_store_fixed(manifest, s, explicit)
        remote = {field: s[flag] for flag, field in (("redis", "redis_url"), ("redis_namespace", "redis_namespace"))
                  if flag in explicit}
        store_config = None
        if remote:  # point an existing store at (another) Redis tier for this run
            from hypic_rag.store.tiered import StoreConfig

            store_config = StoreConfig(**{**manifest.store, **remote})
        rag = HypicRAG.from_store(s["store"], model=s.get("model"), store_config=store_config)
    else:
        rag = HypicRAG.create(
            s["store"], model=s.get("model") or SHIPPED_MODEL, config=ExecutorConfig(seam_tokens=int(s["seam"])),
            template=PromptTemplate(system=s["system"]), store_config=_store_config(s),
            max_segment_tokens=int(s["max_segment_tokens"]),
        )
    if s.get("metrics_port") is not None:
        server = rag.serve_metrics(int(s["metrics_port"]))
        console.print(f"metrics at http://127.0.0.1:{server.server_port}/metrics")
    if s.get("ray") is not None:  # "local" starts a cluster in this process; otherwise an address to join
        from hypic_rag.distributed.ray_prefill import RayConfig

        rag.use_ray(RayConfig(workers=int(s["workers"]), address=None if s["ray"] == "local" else s["ray"]))
    with Progress(TextColumn("[bold]precompute {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console) as bar:
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


def cmd_query(s: dict, explicit: set[str]) -> int:
    from hypic_rag.api import HypicRAG

    with HypicRAG.from_store(s["store"], model=s.get("model"), config=_reading_config(s)) as rag:
        stream = rag.stream(s["question"], k=int(s["k"]), mode=s["mode"], max_new_tokens=int(s["max_new_tokens"]))
        result = None
        if not s.get("json"):
            print("answer: ", end="", flush=True)
        for item in stream:
            if not isinstance(item, str):
                result = item
            elif not s.get("json"):
                print(item, end="", flush=True)
    if s.get("json"):
        print(json.dumps({"question": s["question"], "answer": result.answer, "text": result.generation.text,
                          **result.to_dict()}, indent=1))
        return 0
    print()
    for seg in result.segments:
        print(f"  [{seg.rank}] {seg.record.segment_id}  score={seg.score:.3f}")
    t = result.timings
    stages = (f"seams + question {t.seam * 1000:.1f}" if t.prefill == 0 else
              f"seam {t.seam * 1000:.1f}, question {t.prefill * 1000:.1f}")
    print(f"TTFT {t.ttft * 1000:.1f} ms: retrieval {result.retrieval_seconds * 1000:.1f}, load {t.load * 1000:.1f},")
    print(f"  misses {t.precompute_misses * 1000:.1f}, compose {t.compose * 1000:.1f}, {stages}")
    print(f"tier hits {result.tier_hits}")
    return 0


def cmd_diagnose(s: dict, explicit: set[str]) -> int:
    from hypic_rag.api import HypicRAG

    with HypicRAG.from_store(s["store"], model=s.get("model"), config=_reading_config(s)) as rag:
        result = rag.diagnose(s["question"], k=int(s["k"]), mode=s["mode"], threshold=float(s["threshold"]))
    print(json.dumps({"question": s["question"], **result.to_dict()}, indent=1) if s.get("json") else result.table())
    return 0


def _reading_config(s: dict):
    """The executor settings a store fixed (seam, interior dtype), with this run's recompute budget."""
    from hypic_rag.config import ExecutorConfig
    from hypic_rag.store.manifest import Manifest

    manifest = Manifest.read(s["store"])
    return ExecutorConfig(seam_tokens=manifest.seam_tokens, interior_dtype=manifest.interior_dtype,
                          recompute_budget=float(s["recompute_budget"]))


def store_summary(directory: str | Path) -> dict:
    """A store's manifest, counts, tiers and usage counters, read without loading its model."""
    from hypic_rag.index.segment_index import SegmentIndex
    from hypic_rag.store.disk import DiskTier
    from hypic_rag.store.manifest import Manifest
    from hypic_rag.store.usage import Usage

    directory = Path(directory)
    manifest = Manifest.read(directory)
    from hypic_rag.config import PromptTemplate

    template = PromptTemplate(**manifest.template)
    from hypic_rag.store.tiered import StoreConfig

    index = SegmentIndex(directory / "index", manifest.embedding_dim,
                         body_of=lambda record: template.body_of(record.text, record.title),
                         config=StoreConfig(**manifest.store).index)
    disk = DiskTier(directory / "entries", int(manifest.store.get("disk_bytes", 32 * 2**30)))
    try:
        return {"store": str(directory), "model": manifest.model_path, "fingerprint": manifest.fingerprint,
                "seam": manifest.seam_tokens, "max_segment_tokens": manifest.max_segment_tokens,
                "documents": index.document_count(), "segments": len(index), "index": index.index_kind,
                "disk": {"entries": len(disk), "bytes": disk.used_bytes},
                "usage": Usage.read(directory).__dict__}
    finally:
        index.close()


def cmd_inspect(s: dict, explicit: set[str]) -> int:
    info = store_summary(s["store"])
    if s.get("json"):
        print(json.dumps(info, indent=1))
        return 0
    u = info["usage"]
    for name in ("store", "model", "fingerprint", "seam", "documents", "segments"):
        print(f"{name:<12} {info[name]}")
    print(f"disk tier    {info['disk']['entries']} entries, {info['disk']['bytes']} bytes")
    print(f"requests     {u['requests']}: segment hits {u['segment_hits']}, misses {u['segment_misses']}, "
          f"cached prompt tokens {u['cached_tokens']} of {u['prompt_tokens']}")
    print(f"tier hits    {', '.join(f'{t} {h}' for t, h in sorted(u['tier_hits'].items())) or 'none'}")
    return 0


def cmd_delete(s: dict, explicit: set[str]) -> int:
    from hypic_rag.api import HypicRAG

    with HypicRAG.from_store(s["store"], model=s.get("model")) as rag:
        report = rag.delete(s["doc_ids"])
    print(f"deleted {report.documents} documents ({report.segments} segments, {report.entries_retired} entries)")
    for doc_id in report.missing:
        print(f"not in the store: {doc_id}", file=sys.stderr)
    return 1 if report.missing else 0


COMMANDS = {"precompute": cmd_precompute, "query": cmd_query, "diagnose": cmd_diagnose, "inspect": cmd_inspect,
            "delete": cmd_delete}
