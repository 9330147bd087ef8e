"""Prometheus metrics (real prometheus_client) and the store's usage file."""

import urllib.request

from conftest import demo_docs, demo_rag
from hypic_rag.store.usage import Usage


def _value(text: str, name: str, store: str, **labels) -> float:
    want = {"store": store, **labels}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            got = dict(part.split("=", 1) for part in line[len(name) + 1: line.index("}")].split(","))
            if {k: v.strip('"') for k, v in got.items()} == want:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_requests_hits_misses_tiers_and_ttft_are_exposed_over_http():
    rag = demo_rag()
    server = rag.serve_metrics(0)
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    store = str(rag.directory)
    before = urllib.request.urlopen(url, timeout=10).read().decode()
    usage_before = Usage.read(rag.directory)
    result = rag.query(f"Where was {demo_docs(12)[5]['title']} born?", k=3, max_new_tokens=3)
    after = urllib.request.urlopen(url, timeout=10).read().decode()
    server.shutdown()
    delta = {name: _value(after, name, store) - _value(before, name, store)
             for name in ("hypic_rag_segment_hits_total", "hypic_rag_segment_misses_total",
                          "hypic_rag_cached_prompt_tokens_total", "hypic_rag_ttft_seconds_count")}
    g = result.generation
    assert delta == {"hypic_rag_segment_hits_total": g.segment_hits, "hypic_rag_segment_misses_total": g.segment_misses,
                     "hypic_rag_cached_prompt_tokens_total": g.cached_tokens, "hypic_rag_ttft_seconds_count": 1}
    assert _value(after, "hypic_rag_requests_total", store, mode="hypic") >= 1
    assert _value(after, "hypic_rag_tier_entries", store, tier="disk") == len(rag.store.disk)
    usage = Usage.read(rag.directory)
    assert usage.requests == usage_before.requests + 1
    assert usage.segment_hits == usage_before.segment_hits + g.segment_hits
