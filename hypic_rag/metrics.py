"""Prometheus metrics of the requests a process serves (prometheus_client), by store directory.

    rag.serve_metrics(9464)          # http://127.0.0.1:9464/metrics while the process lives
    hypic-rag precompute ... --metrics-port 9464

Counters: requests, segment hits and misses, prompt and cached prompt tokens, hits per store tier;
a TTFT histogram; gauges of entries and bytes per tier (refreshed after every request and ingest).
"""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server

_LABELS = ("store",)
REQUESTS = Counter("hypic_rag_requests", "Requests served", _LABELS + ("mode",))
SEGMENT_HITS = Counter("hypic_rag_segment_hits", "Retrieved segments served from the store", _LABELS)
SEGMENT_MISSES = Counter("hypic_rag_segment_misses", "Retrieved segments precomputed at request time", _LABELS)
PROMPT_TOKENS = Counter("hypic_rag_prompt_tokens", "Prompt tokens", _LABELS)
CACHED_TOKENS = Counter("hypic_rag_cached_prompt_tokens", "Prompt tokens whose cache was reused", _LABELS)
TIER_HITS = Counter("hypic_rag_tier_hits", "Entry reads served by each store tier", _LABELS + ("tier",))
TIER_BYTES = Gauge("hypic_rag_tier_bytes", "Bytes held by each store tier", _LABELS + ("tier",))
TIER_ENTRIES = Gauge("hypic_rag_tier_entries", "Entries held by each store tier", _LABELS + ("tier",))
NOT_IN_PROMPT = Counter("hypic_rag_retrieved_not_in_prompt",
                        "Retrieved segments found in no prompt (HypicRAG.note_retrieved)", _LABELS)
TTFT = Histogram("hypic_rag_ttft_seconds", "Time to first token", _LABELS,
                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))


def record_request(store: str, mode: str, result) -> None:
    """Count one answered request (a QueryResult)."""
    g = result.generation
    REQUESTS.labels(store, mode).inc()
    SEGMENT_HITS.labels(store).inc(g.segment_hits)
    SEGMENT_MISSES.labels(store).inc(g.segment_misses)
    PROMPT_TOKENS.labels(store).inc(g.prompt_tokens)
    CACHED_TOKENS.labels(store).inc(g.cached_tokens)
    TTFT.labels(store).observe(g.timings.ttft)
    for tier, hits in result.tier_hits.items():
        TIER_HITS.labels(store, tier).inc(hits)


def record_tiers(store: str, stats) -> None:
    """Set the per-tier gauges from a TieredStore's stats()."""
    for tier in stats:
        TIER_BYTES.labels(store, tier.name).set(tier.used_bytes)
        TIER_ENTRIES.labels(store, tier.name).set(tier.entries)


def serve(port: int, addr: str = "127.0.0.1"):
    """Expose every metric at http://addr:port/metrics from a daemon thread; returns the server."""
    server, _thread = start_http_server(port, addr=addr, registry=REGISTRY)
    return server
