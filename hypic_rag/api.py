"""The Python API: a store directory (entries + index + manifest) with a model to answer from it.

    rag = HypicRAG.create("store/", model="hypic_rag/assets/small_model")
    rag.ingest(["docs/"])                       # paths, strings or {"id", "text"} dicts
    result = rag.query("What is the home city of Kamo?", k=4)
    print(result.answer, result.segment_ids, result.timings.ttft, result.tier_hits)
    rag = HypicRAG.from_store("store/")         # later, or in another process
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import replace
from pathlib import Path
from typing import Iterable

from hypic_rag.config import ExecutorConfig, Mode, PromptTemplate, RequestOptions
from hypic_rag.engine import HypicExecutor
from hypic_rag.errors import RequestError, StoreError
from hypic_rag.index.embedder import DEFAULT_EMBEDDER, Embedder
from hypic_rag.index.segment_index import RetrievedSegment, SegmentIndex, SegmentRecord
from hypic_rag.models.fingerprint import ModelFingerprint
from hypic_rag.models.loader import LoadedModel, load_model
from hypic_rag.precompute.pipeline import DeleteReport, IngestReport, ingest_segments, retire_documents
from hypic_rag.precompute.corpus import Document, documents_of
from hypic_rag.precompute.segmenter import Segmenter, check_segment_budget
from hypic_rag.request_methods import RequestMethods, first_line  # noqa: F401  (first_line re-exported)
from hypic_rag.request_worker import RequestWorker
from hypic_rag.retrieval_ledger import RetrievalLedger
from hypic_rag.store.manifest import Manifest
from hypic_rag.store.usage import Usage
from hypic_rag.store.memory import MemoryTier
from hypic_rag.store.tiered import StoreConfig, TieredStore
from hypic_rag.results import QueryResult, StoreInfo  # noqa: F401  (re-exported: hypic_rag.api.QueryResult)

SHIPPED_MODEL = Path(__file__).resolve().parent / "assets" / "small_model"
log = logging.getLogger("hypic_rag")


def _checked_question(question) -> str:
    if not isinstance(question, str) or not question.strip():
        raise RequestError("question must be a non-empty string")
    try:
        question.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError("question is not valid UTF-8 text (it holds undecodable bytes); "
                           "pass it as UTF-8") from None
    return question


class HypicRAG(RequestMethods):
    """A store directory (segment entries, FAISS index, manifest) with the model that answers from it.

    Build one with `HypicRAG.create(directory, model=...)` or reopen one with
    `HypicRAG.from_store(directory)`; use it as a context manager (or call close()) to release it.
    Requests (query, stream, their prompt and asyncio forms) run one at a time on the store's worker
    thread and may be issued from any thread or task."""

    def __init__(self, directory, model, tokenizer, model_path, config, template, store_config, embedder,
                 max_segment_tokens, read_only=False):
        self.directory = Path(directory)
        if self.directory.exists() and not self.directory.is_dir():
            raise StoreError(f"{self.directory} is a file, not a store directory; pass a directory")
        self._lock = threading.RLock()  # guards the executors; only ever held on the worker thread by requests
        self._worker = RequestWorker()  # the one owner of the model: requests and ingests run there in turn
        self.model, self.tokenizer, self.model_path = model, tokenizer, model_path
        self.template = template
        self.loaded = LoadedModel.of(model, tokenizer, model_path)  # shared by every executor below
        # every setting is checked before anything touches the store (a bad one must not be persisted)
        self.max_segment_tokens = check_segment_budget(max_segment_tokens, self.loaded.spec.max_positions)
        self.shared_prefix = template.prefix_ids(tokenizer)
        fingerprint = ModelFingerprint.of(model, config.precompute_seam, self.shared_prefix,
                                          config.interior_dtype).to_string()
        existing = (self.directory / "manifest.json").exists()
        if existing:
            Manifest.read(self.directory).check_compatible(fingerprint, self.directory)
        self.embedder = Embedder(embedder)
        self.store = TieredStore(self.directory, store_config)
        self.executor = HypicExecutor(self.loaded, None, config, self.shared_prefix, self.store)
        self.index = SegmentIndex(self.directory / "index", self.embedder.dim,
                                  body_of=lambda record: template.body_of(record.text, record.title),
                                  config=self.store.config.index)
        if not read_only and not existing:
            Manifest(
                fingerprint=fingerprint, model_path=None if model_path is None else str(model_path),
                seam_tokens=config.precompute_seam, template=template.to_dict(), embedder=embedder,
                embedding_dim=self.embedder.dim, max_segment_tokens=max_segment_tokens, store=dataclasses.asdict(store_config),
            ).write(self.directory)
        self._executors: dict[int, HypicExecutor] = {}  # by seam: entries of settings the store does not record
        self.ray_prefill = None  # set by use_ray()
        self.read_only = read_only
        self.retrievals = RetrievalLedger(self._report_not_in_prompt)
        self._warned_not_in_prompt = False

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, directory, model=SHIPPED_MODEL, tokenizer=None, config: ExecutorConfig | None = None,
               template: PromptTemplate | None = None, store_config: StoreConfig | None = None,
               embedder: str = DEFAULT_EMBEDDER, max_segment_tokens: int = 512,
               device: str | None = None) -> "HypicRAG":
        """Open or start a store at `directory` for `model` (a checkpoint path, or a loaded model with its
        tokenizer). device: where a checkpoint path is loaded ("cpu", "cuda"; default CUDA when present);
        a loaded model stays where it is."""
        model_path = None
        if isinstance(model, (str, Path)):
            model_path = Path(model).resolve()
            model, loaded_tokenizer = load_model(model_path, device=device)
            tokenizer = tokenizer or loaded_tokenizer
        elif device is not None:
            raise RequestError("device= places a model loaded from a path; move a loaded model with .to() first")
        if tokenizer is None:
            raise RequestError("pass the tokenizer together with a loaded model")
        return cls(directory, model, tokenizer, model_path, config or ExecutorConfig(), template or PromptTemplate(),
                   store_config or StoreConfig(), embedder, max_segment_tokens)

    @classmethod
    def from_store(cls, directory, model=None, tokenizer=None, config: ExecutorConfig | None = None,
                   store_config: StoreConfig | None = None, read_only: bool = False) -> "HypicRAG":
        """Reopen a store with the model recorded in its manifest (or the one given, which must match)."""
        manifest = Manifest.read(directory)
        config = config or ExecutorConfig(seam_tokens=manifest.seam_tokens, interior_dtype=manifest.interior_dtype)
        model_path = None
        if model is None or isinstance(model, (str, Path)):
            model_path = Path(model or manifest.model_path or "")
            if not model_path.name:
                raise RequestError(f"store {directory} records no model path; pass model= and tokenizer=")
            if model is None and not model_path.exists():
                raise StoreError(f"the store's model checkpoint {model_path} is gone (moved or deleted); reopen the "
                                 "store with model=PATH (CLI: --model PATH) where the same weights now are")
            model, loaded_tokenizer = load_model(model_path)
            tokenizer = tokenizer or loaded_tokenizer
        try:
            store_config = store_config or StoreConfig(**manifest.store)
            template = PromptTemplate(**manifest.template)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"store manifest {Path(directory) / 'manifest.json'} holds invalid settings: {exc}") from None
        return cls(directory, model, tokenizer, model_path, config, template, store_config,
                   manifest.embedder, manifest.max_segment_tokens, read_only=read_only)

    def executor_for(self, mode: Mode | str | None = None) -> HypicExecutor:
        """The executor whose store holds the entries a rung composes: this store's own for every rung
        its entries serve (the prefill rungs, and the cached rungs built with the store's seam), else
        one over the same LoadedModel with an in-memory tier for that seam's entries (cached). Mode
        and decoding travel with each request's RequestOptions."""
        base = self.executor.config
        mode = base.mode if mode is None else Mode.parse(mode)
        if not mode.rung.segment_cache or base.seam_for(mode) == base.precompute_seam:
            return self.executor
        seam = base.seam_for(mode)
        if seam not in self._executors:  # entries the store's manifest does not record stay in memory, never on disk
            store = MemoryTier(self.store.config.host_bytes, device=self.executor.device, name="other-seam")
            self._executors[seam] = HypicExecutor(self.loaded, None, replace(base, mode=mode), self.shared_prefix,
                                                  store)
        return self._executors[seam]

    def use_ray(self, ray_config=None):
        """Compute cache misses (at query time and in ingest) on Ray actors, each loading this store's
        checkpoint. `ray_config` is a hypic_rag.distributed.ray_prefill.RayConfig (default: 2 local
        workers). Returns the RayPrefill; close() stops it."""
        from hypic_rag.distributed.ray_prefill import RayPrefill

        if self.model_path is None:
            raise RequestError("Ray workers load the model from a checkpoint path: create this HypicRAG with "
                             "model='path/to/checkpoint' instead of a loaded model")
        def swap():
            with self._lock:
                if self.ray_prefill is not None:
                    self.ray_prefill.close()
                self.ray_prefill = RayPrefill.for_executor(self.executor, self.model_path, ray_config)
                self.executor = HypicExecutor(self.loaded, None, self.executor.config, self.shared_prefix,
                                              self.store, miss_prefill=self.ray_prefill)
                self._executors.clear()
            return self.ray_prefill

        return self._worker.run(swap)  # after the requests already queued

    # ------------------------------------------------------------------ ingest
    def ingest(self, items: Iterable[str | Path | dict | Document], batch_size: int = 16, workers: int = 1,
               progress=None, split_progress=None) -> IngestReport:
        """Add or update documents: paths (files or directories), texts, or {"id", "text"[, "title",
        "metadata"]} dicts (hypic_rag/precompute/corpus.py says how ids are chosen). A document
        already indexed with the same content is skipped; one with new content replaces its old
        segments. Paths and plain texts cannot be mixed in one call (a mistyped path would become a
        document); dicts mix with either.

        progress(done, total) counts segments stored; split_progress(done, total) counts characters
        segmented (a very long document takes a while before its first segment is stored)."""
        if isinstance(items, (str, Path, dict, Document)):
            items = [items]
        items = list(items)
        if not items:
            raise RequestError("nothing to ingest")
        for name, value in (("batch_size", batch_size), ("workers", workers)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise RequestError(f"{name} must be an integer >= 1, got {value!r}")
        docs, skipped = documents_of(items)
        segmenter = Segmenter(self.tokenizer, self.template, self.max_segment_tokens)
        total = sum(len(d.text) for d in docs)
        segments, before = [], 0
        for d in docs:
            segments += segmenter.split(d, None if split_progress is None else
                                        (lambda done, _, b=before: split_progress(b + done, total)))
            before += len(d.text)
        def run():
            with self._lock:
                return ingest_segments(self, segments, len(docs), tuple(skipped), batch_size, workers, progress)

        return self._worker.run(run)  # on the model's owner, between requests

    def delete(self, doc_ids: str | Iterable[str]) -> DeleteReport:
        """Remove documents by id (their segments, and the store entries nothing else uses)."""
        ids = [doc_ids] if isinstance(doc_ids, str) else list(doc_ids)
        if not ids or not all(isinstance(d, str) and d for d in ids):
            raise RequestError("delete takes one or more document ids (non-empty strings); see `hypic-rag inspect`")

        def run():
            with self._lock:
                return retire_documents(self, ids)

        return self._worker.run(run)

    # ------------------------------------------------------------------ query
    def retrieve(self, question: str, k: int = 4) -> list[RetrievedSegment]:
        """The top-k segments for a question by the store's embedder and FAISS index, best first."""
        _checked_question(question)
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise RequestError(f"k must be an integer >= 1, got {k!r}")
        if len(self.index) == 0:
            raise RequestError(f"store {self.directory} has no segments yet; ingest documents first")
        hits = self.index.search(self.embedder.embed([question]), k)[0]
        return [replace(h, record=self._checked(h.record)) for h in hits]

    def _checked(self, record: SegmentRecord) -> SegmentRecord:
        """The record, with its token ids and store key re-derived from its text when they disagree
        (a damaged or edited index row): the model never sees tokens other than the text's."""
        ids = tuple(self.tokenizer.encode(record.text, add_special_tokens=False))
        key = self.executor.key_of(ids)
        if ids == record.token_ids and key == record.key:
            return record
        log.warning("hypic_rag: segment %r's stored token ids or key disagree with its text; repaired from the text",
                    record.segment_id)
        self.index.update_tokens(record.segment_id, ids, key)
        return replace(record, token_ids=ids, key=key)

    def question_ids(self, question: str) -> list[int]:
        """The question's token ids in the store's question template."""
        _checked_question(question)
        return self.tokenizer.encode(self.template.question.format(question=question), add_special_tokens=False)

    def options(self, mode: Mode | str | None = None, max_new_tokens: int | None = None,
                temperature: float | None = None, top_p: float | None = None, seed: int | None = None,
                stop: str | list[str] | None = None) -> RequestOptions:
        """One request's options: the store's defaults with the given (not None) settings replaced."""
        return self.executor.config.request_options(mode=mode, max_new_tokens=max_new_tokens, temperature=temperature,
                                                    top_p=top_p, seed=seed, stop=stop)

    def _segments(self, question: str, k: int, segment_ids: list[str] | None) -> list[RetrievedSegment]:
        if segment_ids is None:
            return self.retrieve(question, k)
        out = []
        for rank, sid in enumerate(segment_ids):
            record = self.index.get(sid)
            if record is None:
                raise RequestError(f"unknown segment id {sid!r}; ids look like 'doc-id#0' (see `hypic-rag inspect`)")
            out.append(RetrievedSegment(self._checked(record), float("nan"), rank))
        return out

    # ------------------------------------------------------------------ inspect
    def info(self) -> StoreInfo:
        """The store's directory, fingerprint, model path, counts and tier statistics."""
        records = self.index.records()
        return StoreInfo(str(self.directory), self.executor.fingerprint.to_string(),
                         None if self.model_path is None else str(self.model_path), len(records),
                         len({r.doc_id for r in records}), self.store.stats())

    def _count(self, result: QueryResult, mode: str) -> None:
        """After each request: the Prometheus metrics, and the store's usage file (inspect shows it)."""
        from hypic_rag import metrics

        store = str(self.directory)
        metrics.record_request(store, mode, result)
        metrics.record_tiers(store, self.store.stats())
        if not self.read_only:
            g = result.generation
            try:
                Usage(1, g.segment_hits, g.segment_misses, g.prompt_tokens, g.cached_tokens,
                      {t: h for t, h in result.tier_hits.items() if h}).add_to_file(self.directory)
            except OSError as exc:  # counters are not worth failing a request for
                log.warning("hypic_rag: could not update %s/usage.json: %s", self.directory, exc)

    def note_retrieved(self, segment_ids: list[str], on_answer=None) -> None:
        """Record that a retriever handed these segments to a stuffing chain: a segment later found in
        no prompt is reported (a warning once, and the hypic_rag_retrieved_not_in_prompt metric), and
        `on_answer(figures)` receives the cache figures (QueryResult.to_dict) of each request whose
        prompt holds them. The integrations' retrievers call it; so may any other retriever."""
        self.retrievals.retrieved(segment_ids, on_answer)

    def _report_not_in_prompt(self, segment_ids: list[str]) -> None:
        from hypic_rag import metrics

        metrics.NOT_IN_PROMPT.labels(str(self.directory)).inc(len(segment_ids))
        if not self._warned_not_in_prompt:
            self._warned_not_in_prompt = True
            log.warning("hypic_rag: %d retrieved segment(s) were found in no prompt (e.g. %s): the chain dropped "
                        "them or formatted them beyond recognition, so they were neither cache hits nor misses; "
                        "counted in hypic_rag_retrieved_not_in_prompt (this warning is shown once)",
                        len(segment_ids), segment_ids[0])

    def serve_metrics(self, port: int, addr: str = "127.0.0.1"):
        """Expose Prometheus metrics (hypic_rag/metrics.py) at http://addr:port/metrics while this
        process lives; port 0 picks a free one (server.server_port). Returns the server."""
        from hypic_rag import metrics

        metrics.record_tiers(str(self.directory), self.store.stats())
        return metrics.serve(port, addr)

    def __enter__(self) -> "HypicRAG":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"HypicRAG({str(self.directory)!r}, model={str(self.model_path or type(self.model).__name__)!r}, "
                f"segments={len(self.index)}, mode={self.executor.config.mode.value!r})")

    def close(self) -> None:
        """Finish the requests already queued, then release the store, the index and any Ray workers
        (a second call does nothing)."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        self._worker.close()
        self.retrievals.settle(older_than=0)
        if self.ray_prefill is not None:
            self.ray_prefill.close()
            self.ray_prefill = None
        self.store.close()
        self.index.close()
