"""The query path, one request at a time.

Request lifecycle (HypicExecutor.stream):
 1. validate the segments and the question (token ids, lengths, positions);
 2. by mode: full_recompute prefills everything; prefix_cache restores the longest exactly-seen
    prefix of segments and prefills the rest; the cached modes load each segment's entry from the
    store, precomputing misses (each independently, after the shared prefix);
 3. compose the entries onto a copy of the shared-prefix cache (seam recompute in hypic);
 4. prefill the question at its real positions;
 5. decode, yielding tokens; the last event carries the GenerationResult with timings.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Callable, Collection, Iterator, Sequence

import torch
from transformers import DynamicCache

from hypic_rag.config import ExecutorConfig, Mode, RequestOptions
from hypic_rag.errors import RequestError, UnsupportedModelError
from hypic_rag.executor import cache_ops
from hypic_rag.executor.clock import clock
from hypic_rag.executor.compose import compose_segments
from hypic_rag.executor.entry_check import EntryChecker
from hypic_rag.executor.generate import Sampler, decode, transformers_step
from hypic_rag.executor.text_stream import TextStream
from hypic_rag.executor.miss_prefill import MissPrefill, batched_precompute
from hypic_rag.executor.validation import validated_ids, validated_request
from hypic_rag.executor.prefix_cache import PrefixSnapshotCache, chain_keys
from hypic_rag.models.fingerprint import ModelFingerprint, segment_key, tokens_digest
from hypic_rag.models.loader import LoadedModel
from hypic_rag.runtime.contexts import LeanState
from hypic_rag.store.base import EntryStore
from hypic_rag.store.memory import MemoryTier, on_device
from hypic_rag.types import GenerationResult, SegmentEntry, Timings

log = logging.getLogger("hypic_rag")


@dataclass
class _Counts:
    """Per-request segment counts filled in while the cache is built (stage seconds go to Timings)."""

    hits: int = 0
    misses: int = 0
    cached: int = 0


@dataclass(frozen=True)
class _Filled:
    cache: object  # a transformers DynamicCache, or the lean runtime's LeanState
    step: Callable[[int, int], torch.Tensor]  # (token, position) -> next logits, extending `cache`
    logits: torch.Tensor
    position: int  # the position the first generated token takes
    counts: _Counts
    timings: Timings  # stage seconds up to the first token's logits (ttft and decode filled in later)


@dataclass(frozen=True)
class StreamEvent:
    """One streamed item: a generated token with the text it released, text released at the end
    (token_id None: held back while it could have begun a stop string), or the final result."""

    token_id: int | None
    text: str | None
    result: GenerationResult | None = None


class HypicExecutor:
    """Runs requests made of cached segments plus a question on one transformers hybrid model."""

    def __init__(
        self,
        model: "torch.nn.Module | LoadedModel",
        tokenizer=None,
        config: ExecutorConfig | None = None,
        shared_prefix: Sequence[int] = (),
        store: EntryStore | None = None,
        miss_prefill: MissPrefill | None = None,
    ):
        # a LoadedModel is shared with the other executors over the model; a bare model gets its own
        loaded = model if isinstance(model, LoadedModel) else LoadedModel.of(model, tokenizer)
        self.loaded = loaded
        self.model, self.tokenizer = loaded.model, loaded.tokenizer if tokenizer is None else tokenizer
        self.config = config or ExecutorConfig()
        self.spec, self.mixers, self.rotary_emb = loaded.spec, loaded.mixers, loaded.rotary_emb
        self.device, self.dtype, self.vocab_size = loaded.device, loaded.dtype, loaded.vocab_size
        self.eos_ids = loaded.eos_ids
        self.shared_prefix = self._validated_ids(shared_prefix, "shared_prefix", allow_empty=True)
        self.fingerprint = ModelFingerprint.of(self.model, self.config.precompute_seam, self.shared_prefix,
                                               self.config.interior_dtype)
        self.store: EntryStore = (
            store if store is not None else MemoryTier(capacity_bytes=2**62, device=self.device, name="memory")
        )
        self.miss_prefill: MissPrefill = miss_prefill or self.precompute_many
        if self.shared_prefix not in loaded.prefix_caches:  # run once per model and prefix
            loaded.prefix_caches[self.shared_prefix] = self._compute_prefix_cache()
        self._prefix_cache = loaded.prefix_caches[self.shared_prefix]
        self.checker = EntryChecker(self.fingerprint.to_string(), self.config.precompute_seam, self.dtype,
                                    lambda segs: batched_precompute(self, segs), filler_token=0)
        self.dropped_entries = 0  # stored entries refused by the checks (then recomputed)
        self.lean = self._lean_runtime()  # None: every request runs through transformers' forward
        self.prefix_snapshots = PrefixSnapshotCache(  # the prefix_cache rung's boundary snapshots
            self.config.prefix_cache_entries, copy=cache_ops.clone_cache if self.lean is None else LeanState.copy)

    def _lean_runtime(self):
        wanted = self.config.runtime
        if wanted == "transformers" or (wanted == "auto" and self.device.type != "cuda"):
            return None
        try:
            return self.loaded.lean_runtime(self.shared_prefix, self.config.compile_graphs)
        except UnsupportedModelError:
            if wanted == "lean":
                raise
            return None

    # ----------------------------------------------------------------------------- validation
    def _validated_ids(self, ids: Sequence[int], what: str, allow_empty: bool = False) -> tuple[int, ...]:
        return validated_ids(ids, what, self.vocab_size, self.spec.max_positions, allow_empty)

    def _validated_request(self, segments, question, max_new_tokens: int | None = None):
        """(segments, question) as token-id tuples, checked to fit the model with the decode budget."""
        budget = self.config.max_new_tokens if max_new_tokens is None else max_new_tokens
        return validated_request(segments, question, self.vocab_size, self.spec.max_positions,
                                 len(self.shared_prefix), budget)

    def check_entry(self, entry: SegmentEntry) -> None:
        """Refuse an entry built for another model, setting or dtype (entries from other processes)."""
        problem = self.checker.problem(entry, entry.token_ids)
        if problem is not None:
            raise RequestError(problem)

    # ----------------------------------------------------------------------------- caches
    @torch.no_grad()
    def _compute_prefix_cache(self) -> DynamicCache | None:
        if not self.shared_prefix:
            return None
        cache = cache_ops.new_cache(self.model)
        ids = torch.tensor([self.shared_prefix], device=self.device)
        positions = torch.arange(len(self.shared_prefix), device=self.device)[None]
        self.model.model(input_ids=ids, past_key_values=cache, position_ids=positions, use_cache=True)
        return cache

    def _start_cache(self) -> DynamicCache:
        if self._prefix_cache is None:
            return cache_ops.new_cache(self.model)
        return cache_ops.clone_cache(self._prefix_cache)

    def key_of(self, token_ids: Sequence[int]) -> str:
        """The store key of a segment's entry: a hash of its tokens and this executor's fingerprint."""
        return segment_key(self.fingerprint, tuple(token_ids))

    def precompute(self, token_ids: Sequence[int]) -> SegmentEntry:
        """Build (but do not store) the entry of one segment."""
        return self._precompute(self._validated_ids(token_ids, "segment"))

    def ensure(self, token_ids: Sequence[int]) -> tuple[SegmentEntry, bool]:
        """The stored entry of a segment, precomputing and storing it on a miss. Returns (entry, was_hit)."""
        return self._ensure(self._validated_ids(token_ids, "segment"))

    def _precompute(self, ids: tuple[int, ...]) -> SegmentEntry:
        return batched_precompute(self, [ids])[0]

    def precompute_many(self, segments: Sequence[Sequence[int]]) -> list[SegmentEntry]:
        """Build (but do not store) the entries of several segments on this executor's device; segments
        of equal length share one batched forward (config.miss_batch_size at a time)."""
        return batched_precompute(self, [self._validated_ids(s, f"segment {i}") for i, s in enumerate(segments)])

    @property
    def prefix_cache(self) -> DynamicCache | None:
        """The cache after the shared prefix (None without one); read-only: copy before extending."""
        return self._prefix_cache

    def _load(self, segs: Sequence[tuple[int, ...]]) -> list[SegmentEntry | None]:
        """The stored entries of `segs` on this device (None on a miss). An entry that fails the
        checks (entry_check) is dropped from the store, so the caller recomputes and re-stores it."""
        entries: list[SegmentEntry | None] = []
        untrusted: list[int] = []
        for ids in segs:
            key = self.key_of(ids)
            entry = self.store.get(key)
            if entry is not None:
                from_outside = self.store.last_read_untrusted
                problem = self.checker.problem(entry, ids)
                if problem is not None:
                    self._drop(key, problem)
                    entry = None
                elif from_outside:
                    untrusted.append(len(entries))
            entries.append(None if entry is None else on_device(entry, self.device))
        refused = {segs[i] for i, ok in zip(untrusted, self.checker.spot_check([entries[i] for i in untrusted]))
                   if not ok}
        for ids in refused:
            self._drop(self.key_of(ids), "its first tokens' K/V differ from a fresh forward")
        return [None if ids in refused else entry for ids, entry in zip(segs, entries)]

    def _drop(self, key: str, problem: str) -> None:
        log.warning("hypic_rag: dropping stored entry %s and recomputing it: %s", key[:16], problem)
        self.store.discard(key)
        self.dropped_entries += 1

    def _ensure(self, ids: tuple[int, ...]) -> tuple[SegmentEntry, bool]:
        """ensure() for ids already validated (no second per-token check)."""
        (entry,) = self._load([ids])
        if entry is not None:
            return entry, True
        entry = self._precompute(ids)
        self.store.put(self.key_of(ids), entry)
        return entry, False

    # ----------------------------------------------------------------------------- request path
    @torch.no_grad()
    def _prefill(self, cache: DynamicCache, ids: Sequence[int], start: int, logits: bool) -> torch.Tensor | None:
        t = torch.tensor([list(ids)], device=self.device)
        positions = torch.arange(start, start + len(ids), device=self.device)[None]
        if not logits:
            self.model.model(input_ids=t, past_key_values=cache, position_ids=positions, use_cache=True)
            return None
        out = self.model(input_ids=t, past_key_values=cache, position_ids=positions, use_cache=True, logits_to_keep=1)
        return out.logits[0, -1]

    def _mode(self, mode: Mode | str | None) -> Mode:
        """The request's rung, checked against the entries this executor's store holds."""
        mode = self.config.mode if mode is None else Mode.parse(mode)
        if mode.rung.segment_cache and self.config.seam_for(mode) != self.config.precompute_seam:
            raise RequestError(
                f"mode {mode.value} composes entries built with a {self.config.seam_for(mode)}-token seam, and this "
                f"executor's store holds {self.config.precompute_seam}-token ones; query through HypicRAG (it keeps "
                f"each setting's entries apart) or build an executor with mode={mode.value!r}")
        return mode

    def _fill(self, segs: list[tuple[int, ...]], question: tuple[int, ...], mode: Mode,
              transient: frozenset[int] = frozenset()) -> "_Filled":
        """Steps 2-4 of the lifecycle, by mode."""
        rung = mode.rung
        if rung.segment_cache:
            return self._fill_composed(segs, question, mode, transient)
        return self._fill_prefix_cache(segs, question) if rung.prefix_reuse else self._fill_full(segs, question)

    def _fill_full(self, segs, question) -> "_Filled":
        p0 = len(self.shared_prefix)
        t0 = clock(self.device)
        body = [t for s in segs for t in s] + list(question)
        if self.lean is not None:
            logits, state = self.lean.prefill(body)
            return _Filled(state, self._lean_step(state), logits, p0 + len(body), _Counts(cached=p0),
                           Timings(prefill=clock(self.device) - t0))
        cache = self._start_cache()
        logits = self._prefill(cache, body, p0, logits=True)
        return _Filled(cache, transformers_step(self.model, cache), logits, p0 + len(body), _Counts(cached=p0),
                       Timings(prefill=clock(self.device) - t0))

    def _fill_prefix_cache(self, segs, question) -> "_Filled":
        p0 = len(self.shared_prefix)
        t0 = clock(self.device)
        keys = chain_keys(tokens_digest(self.shared_prefix), segs)
        covered, cache = self.prefix_snapshots.longest(keys)
        if self.lean is not None:  # the uncovered rest in one forward, a snapshot at every boundary
            state = cache if cache is not None else self.lean.prefix_state.copy()
            load = clock(self.device) - t0
            counts = _Counts(hits=covered, misses=len(segs) - covered, cached=state.length)
            t0 = clock(self.device)
            logits, state, snapshots = self.lean.prefix_fill(state, segs[covered:], question)
            for key, snapshot in zip(keys[covered:], snapshots):
                self.prefix_snapshots.store(key, snapshot)
            return _Filled(state, self._lean_step(state), logits, state.length, counts,
                           Timings(load=load, prefill=clock(self.device) - t0))
        cache = cache if cache is not None else self._start_cache()
        load = clock(self.device) - t0
        position = p0 + sum(len(s) for s in segs[:covered])
        counts = _Counts(hits=covered, misses=len(segs) - covered, cached=position)
        t0 = clock(self.device)
        for i in range(covered, len(segs)):
            self._prefill(cache, segs[i], position, logits=False)
            position += len(segs[i])
            self.prefix_snapshots.store(keys[i], cache)
        logits = self._prefill(cache, question, position, logits=True)
        timings = Timings(load=load, prefill=clock(self.device) - t0)
        return _Filled(cache, transformers_step(self.model, cache), logits, position + len(question), counts, timings)

    def _fill_composed(self, segs, question, mode: Mode, transient: frozenset[int] = frozenset()) -> "_Filled":
        """transient: indices of segments that are request text, not documents (a stuffed prompt's
        headers and glue): computed for this request only, never stored, not counted as hits or misses."""
        p0 = len(self.shared_prefix)
        counts = _Counts()
        t0 = clock(self.device)
        entries = self._load(segs)
        load = clock(self.device) - t0
        missing: dict[tuple[int, ...], list[int]] = {}
        for i, (seg, entry) in enumerate(zip(segs, entries)):
            if entry is None:
                missing.setdefault(seg, []).append(i)
        counts.misses = sum(1 for where in missing.values() for i in where if i not in transient)
        counts.hits = len(segs) - len(transient) - counts.misses
        keep = {seg for seg, where in missing.items() if any(i not in transient for i in where)}
        precompute_misses = 0.0
        if missing:
            t0 = clock(self.device)
            for seg, entry in zip(missing, self.miss_prefill(list(missing))):
                self.check_entry(entry)  # entries from another process must match this model and setting
                entry = on_device(entry, self.device)
                if seg in keep:  # a document; request text is never persisted
                    self.store.put(self.key_of(seg), entry)
                for i in missing[seg]:
                    entries[i] = entry
            precompute_misses = clock(self.device) - t0
        if mode is Mode.HYPIC and self.lean is not None and self.lean.covers(entries, question):
            t0 = clock(self.device)
            logits, state = self.lean.hypic(entries, question, graphs=self.config.cuda_graphs)
            counts.cached = state.length - len(question) - sum(e.seam_tokens for e in entries)
            timings = Timings(load=load, precompute_misses=precompute_misses, seam=clock(self.device) - t0)
            return _Filled(state, self._lean_step(state), logits, state.length, counts, timings)
        cache = self._start_cache()
        report = compose_segments(self.model, self.spec, self.rotary_emb, cache, entries, mode, p0,
                                  self.mixers, self.config.batched_seams, list(question), self.config.recompute_budget)
        counts.cached = report.end_offset - report.recomputed_tokens
        logits = report.question_logits  # the question rode in the seam pass
        prefill = 0.0
        if logits is None:
            t0 = clock(self.device)
            logits = self._prefill(cache, question, report.end_offset, logits=True)
            prefill = clock(self.device) - t0
        timings = Timings(load=load, precompute_misses=precompute_misses, compose=report.compose_seconds,
                          seam=report.seam_seconds, prefill=prefill)
        return _Filled(cache, transformers_step(self.model, cache), logits, report.end_offset + len(question), counts,
                       timings)

    def _lean_step(self, state) -> Callable[[int, int], torch.Tensor]:
        decoder = self.lean.decoder(state)  # preallocated buffers; one CUDA graph per request on CUDA
        return lambda token, _position: decoder.step(token)

    def diagnose(self, segments: Sequence[Sequence[int]], question: Sequence[int], mode: Mode | str | None = None,
                 threshold: float = 0.05):
        """Per-layer relative hidden-state error of a cached rung against full recompute, at the
        question's tokens, and the first layer over `threshold` (executor/diagnose.py)."""
        from hypic_rag.executor.diagnose import diagnose

        return diagnose(self, segments, question, mode, threshold)

    def first_token_logits(self, segments: Sequence[Sequence[int]], question: Sequence[int],
                           mode: Mode | str | None = None) -> torch.Tensor:
        """Next-token logits after the question, [vocab] fp32 (for accuracy measurements)."""
        segs, q = self._validated_request(segments, question)
        return self._fill(segs, q, self._mode(mode)).logits.float()

    def stream(
        self, segments: Sequence[Sequence[int]], question: Sequence[int], max_new_tokens: int | None = None,
        ignore_eos: bool = False, options: RequestOptions | None = None, transient: Collection[int] = (),
    ) -> Iterator[StreamEvent]:
        """Yield one StreamEvent per generated token, then a final event with the GenerationResult.

        `transient` lists the indices of segments that are request text rather than documents: they
        are computed for this request only, never stored, and not counted as hits or misses.

        `options` sets this request's mode and decoding (the config's defaults otherwise);
        max_new_tokens and ignore_eos (decode exactly max_new_tokens tokens, for throughput runs)
        override it. A stop string ends decoding at once; the answer's text ends before it."""
        options = options or self.config.request_options()
        if max_new_tokens is not None or ignore_eos:
            options = replace(options, max_new_tokens=options.max_new_tokens if max_new_tokens is None
                              else max_new_tokens, ignore_eos=ignore_eos or options.ignore_eos)
        if options.stop and self.tokenizer is None:
            raise RequestError("stop strings need the model's tokenizer; build the executor with one")
        budget = options.max_new_tokens
        mode = self._mode(options.mode)
        segs, q = self._validated_request(segments, question, budget)
        started = clock(self.device)
        filled = self._fill(segs, q, mode, frozenset(transient))
        counts = filled.counts
        sampler = Sampler(options, self.device)
        text = None if self.tokenizer is None else TextStream(self.tokenizer, options.stop, self.eos_ids)
        tokens: list[int] = []
        ttft = 0.0
        stop_ids = frozenset() if options.ignore_eos else self.eos_ids
        for token in decode(filled.step, filled.logits, filled.position, budget, sampler, stop_ids):
            if not tokens:
                ttft = clock(self.device) - started
            tokens.append(token)
            yield StreamEvent(token_id=token, text=None if text is None else text.push(token))
            if text is not None and text.stopped:
                break  # closes the decode generator: no token past the stop string is computed
        if text is not None and not text.stopped:
            rest = text.finish()
            if rest:
                yield StreamEvent(token_id=None, text=rest)
        decode_s = clock(self.device) - started - ttft
        if text is not None and text.stopped:
            finish = "stop"
        else:
            finish = "eos" if tokens and tokens[-1] in self.eos_ids else "length"
        timings = replace(filled.timings, ttft=ttft, decode=decode_s)
        result = GenerationResult(
            token_ids=tuple(tokens), text=None if text is None else text.text, finish_reason=finish,
            prompt_tokens=len(self.shared_prefix) + sum(len(s) for s in segs) + len(q),
            cached_tokens=counts.cached, segment_hits=counts.hits, segment_misses=counts.misses,
            timings=timings, first_token_logits=filled.logits.float().cpu(),
        )
        yield StreamEvent(token_id=None, text=None, result=result)

    def generate(
        self, segments: Sequence[Sequence[int]], question: Sequence[int], max_new_tokens: int | None = None,
        ignore_eos: bool = False, options: RequestOptions | None = None,
    ) -> GenerationResult:
        """stream(), collected: the GenerationResult."""
        result = None
        for event in self.stream(segments, question, max_new_tokens, ignore_eos, options):
            result = event.result or result
        return result
