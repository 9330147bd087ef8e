"""Corpus precompute into a shared Redis tier: segments/s per worker, locally and on Ray, and a run
stopped midway then resumed from another store directory (as another machine would).

Each configuration runs `hypic-rag precompute` (the CLI, a fresh process) over the same corpus of
long synthetic documents (5 paragraphs, one segment each) into its own Redis namespace on a
redis-server started here; the time is the ingest's own (IngestReport.seconds: after the model and
the Ray workers are up). One torch thread per worker.

    python bench/ray_redis_precompute.py --out bench/results
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hypic_rag.data.synthetic import make_corpus

REPORT = re.compile(r"(\d+) segments .*?: (\d+) entries computed, (\d+) reused, \d+ retired, ([\d.]+)s", re.S)


def redis_server() -> tuple[subprocess.Popen, str, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    folder = tempfile.mkdtemp(prefix="bench-redis-")
    proc = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", folder], stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    return proc, f"redis://127.0.0.1:{port}/0", folder


def command(corpus: Path, store: Path, url: str, namespace: str, workers: int, ray: bool) -> list[str]:
    cmd = [sys.executable, "-m", "hypic_rag.cli.main", "precompute", str(corpus), "--store", str(store),
           "--redis", url, "--redis-namespace", namespace, "--workers", str(workers), "--batch-size", "4"]
    return cmd + (["--ray"] if ray else [])


def parse(stderr: str) -> dict:
    found = REPORT.search(stderr)
    if found is None:
        raise SystemExit(f"no ingest report in:\n{stderr[-2000:]}")
    segments, computed, reused, seconds = found.groups()
    return {"segments": int(segments), "computed": int(computed), "reused": int(reused), "seconds": float(seconds)}


def entries_in(url: str, namespace: str) -> int:
    from hypic_rag.store.redis_tier import RedisTier

    return len(RedisTier(url, namespace))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--documents", type=int, default=96)
    p.add_argument("--out", default="bench/results")
    args = p.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    server, url, folder = redis_server()
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            docs, _ = make_corpus(args.documents, seed=(1 << 30) + 500, num_docs=4, paragraphs=5, two_hop_fraction=0)
            docs = docs[: args.documents]
            corpus = tmp / "corpus.jsonl"
            corpus.write_text("".join(json.dumps(d) + "\n" for d in docs))
            for name, workers, ray in (("local, 1 process", 1, False), ("Ray, 1 worker", 1, True),
                                       ("Ray, 2 workers", 2, True)):
                ns = f"bench{len(rows)}"
                out = subprocess.run(command(corpus, tmp / ns, url, ns, workers, ray), capture_output=True, text=True,
                                     env=env, timeout=1800)
                got = parse(out.stderr)
                got.update(setting=name, workers=workers, segments_per_s=got["computed"] / got["seconds"],
                           per_worker=got["computed"] / got["seconds"] / workers, in_redis=entries_in(url, ns))
                rows.append(got)
                print(json.dumps(got), flush=True)
            # stopped midway (Ctrl-C), then resumed from another store directory
            ns = "resume"
            first = subprocess.Popen(command(corpus, tmp / "a", url, ns, 2, True), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
            while entries_in(url, ns) < args.documents // 4 and first.poll() is None:
                time.sleep(0.05)
            first.send_signal(signal.SIGINT)
            first.communicate(timeout=300)
            stopped_at = entries_in(url, ns)
            second = subprocess.run(command(corpus, tmp / "b", url, ns, 2, True), capture_output=True, text=True,
                                    env=env, timeout=1800)
            resumed = parse(second.stderr)
            resume = {"stopped_with_entries_in_redis": stopped_at, **{f"resumed_{k}": v for k, v in resumed.items()},
                      "in_redis_after": entries_in(url, ns)}
            print(json.dumps(resume), flush=True)
    finally:
        server.terminate()
        shutil.rmtree(folder, ignore_errors=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ray_redis_precompute.json").write_text(json.dumps({"runs": rows, "resume": resume}, indent=1))
    lines = ["# Precompute into a shared Redis tier: locally and on Ray", "",
             f"`python bench/ray_redis_precompute.py --out bench/results`: {args.documents} documents of 5 paragraphs "
             "(one segment each), shipped model, one torch thread per worker, this machine's "
             f"{os.cpu_count()} cores; seconds are the ingest's own (model and workers already up).", "",
             "| setting | segments computed | seconds | segments/s | per worker | entries in Redis |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['computed']} | {r['seconds']:.1f} | {r['segments_per_s']:.2f} | "
                     f"{r['per_worker']:.2f} | {r['in_redis']} |")
    lines += ["", f"Stopped (Ctrl-C) with {resume['stopped_with_entries_in_redis']} of {args.documents} entries in Redis, "
              f"then rerun from another store directory on Ray with 2 workers: {resume['resumed_computed']} computed, "
              f"{resume['resumed_reused']} reused, {resume['in_redis_after']} in Redis after."]
    (out / "ray_redis_precompute.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
