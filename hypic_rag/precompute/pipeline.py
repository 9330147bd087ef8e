"""Corpus ingest: segment, precompute entries (store), embed and index, in committed batches.

Per batch: entries first (each disk write is atomic), then the index rows in one transaction. A
run killed at any point loses nothing committed, and a rerun skips segments already indexed and
entries already stored (resume by content key).

Documents have a lifecycle: a document whose segments (ids and content keys) are already indexed
is unchanged and skipped; one indexed with other segments (an edited file, a re-ingested id with
new text) has its old segments removed first and is precomputed again; store entries that no
segment uses any more are retired at the end. `retire_documents` is the delete behind
HypicRAG.delete and `hypic-rag delete`.
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Callable

from hypic_rag.config import ExecutorConfig, PromptTemplate
from hypic_rag.engine import HypicExecutor
from hypic_rag.errors import RequestError
from hypic_rag.index.segment_index import SegmentRecord
from hypic_rag.models.loader import LoadedModel
from hypic_rag.precompute.segmenter import Segment
from hypic_rag.store.manifest import Manifest
from hypic_rag.store.serde import entry_from_bytes, entry_to_bytes


@dataclass(frozen=True)
class IngestReport:
    """What one ingest did: documents seen (new, updated, unchanged), segments (indexed now),
    entries computed or reused from the store, old segments and entries retired, files skipped."""

    documents: int
    segments: int
    new_segments: int
    entries_computed: int
    entries_reused: int
    skipped_files: tuple[str, ...]
    seconds: float
    documents_new: int = 0
    documents_updated: int = 0
    documents_unchanged: int = 0
    segments_retired: int = 0
    entries_retired: int = 0


@dataclass(frozen=True)
class DeleteReport:
    """What one delete removed; `missing` lists ids no indexed document has."""

    documents: int
    segments: int
    entries_retired: int
    missing: tuple[str, ...] = ()


def retire_entries(index, store, keys) -> int:
    """Discard the store entries of `keys` that no indexed segment uses any more."""
    retired = 0
    for key in sorted(set(keys)):
        if not index.key_in_use(key) and key in store:
            getattr(store, "retire", store.discard)(key)  # a shared tier keeps what other stores may use
            retired += 1
    return retired


def retire_documents(rag, doc_ids: list[str]) -> DeleteReport:
    removed = rag.index.delete_documents(doc_ids)
    found = {sid.rsplit("#", 1)[0] for sid, _ in removed}
    retired = retire_entries(rag.index, rag.store, [key for _, key in removed])
    return DeleteReport(len(found), len(removed), retired, tuple(d for d in doc_ids if d not in found))


# ----------------------------------------------------------------------------- worker processes
_WORKER = None


def _init_worker(store_dir: str) -> None:
    """A worker process: the store's model and setting from its manifest, nothing else of the store."""
    global _WORKER
    import torch

    torch.set_num_threads(1)
    manifest = Manifest.read(store_dir)
    loaded = LoadedModel.load(manifest.model_path, device="cpu")
    executor = HypicExecutor(loaded, None, ExecutorConfig(seam_tokens=manifest.seam_tokens,
                                                          interior_dtype=manifest.interior_dtype),
                             PromptTemplate(**manifest.template).prefix_ids(loaded.tokenizer))
    manifest.check_compatible(executor.fingerprint.to_string(), store_dir)
    _WORKER = executor


def _precompute_in_worker(token_ids: tuple[int, ...]) -> bytes:
    return entry_to_bytes(_WORKER.precompute(token_ids))


# ----------------------------------------------------------------------------- ingest
def ingest_segments(
    rag,
    segments: list[Segment],
    documents: int,
    skipped_files: tuple[str, ...] = (),
    batch_size: int = 16,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> IngestReport:
    if batch_size < 1:
        raise RequestError(f"batch_size must be >= 1, got {batch_size}")
    if workers < 1:
        raise RequestError(f"workers must be >= 1, got {workers}")
    started = time.perf_counter()
    executor, store, index = rag.executor, rag.store, rag.index
    key_of = {s.segment_id: executor.key_of(s.token_ids) for s in segments}  # content keys, hashed once
    by_doc: dict[str, list[Segment]] = {}
    for s in segments:
        by_doc.setdefault(s.doc_id, []).append(s)
    pending: list[Segment] = []
    outcome = {"new": 0, "updated": 0, "unchanged": 0}
    stale: list[str] = []  # edited documents, or ones cut short by a killed run: their old rows go first
    for doc_id, segs in by_doc.items():
        indexed = index.document_segments(doc_id)
        if indexed == [(s.segment_id, key_of[s.segment_id]) for s in segs]:
            outcome["unchanged"] += 1
            continue
        if indexed:
            stale.append(doc_id)
        outcome["updated" if indexed else "new"] += 1
        pending += segs
    retired_keys = [key for _, key in index.delete_documents(stale)] if stale else []  # one transaction
    done = len(segments) - len(pending)
    computed = reused = 0
    pool = None
    if workers > 1 and pending and rag.ray_prefill is None and rag.model_path is None:
        raise RequestError("worker processes load the model from a checkpoint path: create the HypicRAG with "
                           "model='path/to/checkpoint', or ingest with workers=1")
    if workers > 1 and pending and rag.ray_prefill is None:  # Ray actors replace the local processes
        pool = ProcessPoolExecutor(  # spawn: forking a process that already runs torch threads can deadlock
            max_workers=workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
            initargs=(str(rag.directory),),
        )
    try:
        if progress:
            progress(done, len(segments))
        for start in range(0, len(pending), batch_size):
            batch = pending[start : start + batch_size]
            keys = [key_of[s.segment_id] for s in batch]
            todo = [(k, s) for k, s in zip(keys, batch) if k not in store]
            reused += len(batch) - len(todo)
            if pool is not None:
                blobs = pool.map(_precompute_in_worker, [s.token_ids for _, s in todo])
                entries = [entry_from_bytes(b) for b in blobs]
            elif todo:  # the executor's miss prefill: batched on this device, or Ray actors after use_ray()
                entries = executor.miss_prefill([tuple(s.token_ids) for _, s in todo])
                for entry in entries:
                    executor.check_entry(entry)
            else:
                entries = []
            for (key, _), entry in zip(todo, entries):
                store.put(key, entry)
            computed += len(todo)
            vectors = rag.embedder.embed([s.text for s in batch])
            records = [
                SegmentRecord(s.segment_id, k, s.doc_id, s.title, s.text, s.token_ids, s.metadata)
                for s, k in zip(batch, keys)
            ]
            index.add(records, vectors)
            done += len(batch)
            if progress:
                progress(done, len(segments))
    finally:
        if pool is not None:
            pool.shutdown()
    retired = retire_entries(index, store, retired_keys)
    return IngestReport(documents, len(segments), len(pending), computed, reused, tuple(skipped_files),
                        time.perf_counter() - started, outcome["new"], outcome["updated"], outcome["unchanged"],
                        len(retired_keys), retired)
