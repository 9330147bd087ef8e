"""The hypic-rag CLI as a user runs it, in real subprocesses."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

from conftest import demo_docs

CLI = [sys.executable, "-m", "hypic_rag.cli.main"]


def run(*args, timeout=300):
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=timeout)


def write_corpus(path, docs):
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path


def indexed(store):
    db = store / "index" / "segments.sqlite"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=1) as con:
            return con.execute("SELECT COUNT(*) FROM segments").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_precompute_query_inspect(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.jsonl", demo_docs(8))
    store = tmp_path / "store"
    out = run("precompute", str(corpus), "--store", str(store), "--batch-size", "4")
    assert out.returncode == 0, out.stderr
    assert "8 documents (8 new, 0 updated, 0 unchanged), 8 segments (8 indexed now, 0 retired): 8 entries computed" \
        in " ".join(out.stderr.split())
    name = demo_docs(8)[2]["title"]
    out = run("query", f"What is the home city of {name}?", "--store", str(store), "--k", "2", "--max-new-tokens", "4")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("answer:") and f"[0] {name}#0" in out.stdout and "TTFT" in out.stdout
    out = run("inspect", "--store", str(store))
    assert out.returncode == 0, out.stderr
    assert "segments     8" in out.stdout and "fingerprint  qwen3_5_text:" in out.stdout
    assert "disk tier    8 entries" in out.stdout and "requests     1: segment hits 2, misses 0" in out.stdout
    assert all(len(line) <= 80 for line in out.stdout.splitlines() if not line.startswith(("store", "model", "finger")))


def test_json_output_version_and_help_with_defaults(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.jsonl", demo_docs(3))
    store = tmp_path / "store"
    assert run("precompute", str(corpus), "--store", str(store)).returncode == 0
    name = demo_docs(3)[1]["title"]
    out = run("query", f"What is the home city of {name}?", "--store", str(store), "--k", "2", "--json",
              "--mode", "hypic_adaptive", "--recompute-budget", "0.3")
    result = json.loads(out.stdout)
    assert result["segment_ids"][0] == f"{name}#0" and result["segment_hits"] == 2 and "ttft" in result["timings"]
    info = json.loads(run("inspect", "--store", str(store), "--json").stdout)
    assert (info["documents"], info["segments"], info["usage"]["requests"]) == (3, 3, 1)
    version = run("--version")
    assert version.returncode == 0 and version.stdout.startswith("hypic-rag 0.")
    helps = run("query", "--help").stdout
    assert "(default: 4)" in " ".join(helps.split()) and "{full_recompute," in helps
    assert "(default: 8)" in " ".join(run("precompute", "--help").stdout.split())
    bad = run("query", "q", "--store", str(store), "--mode", "fastest")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_inspect_does_not_load_the_model_and_a_moved_checkpoint_reopens_with_model(tmp_path):
    import shutil

    from hypic_rag.api import SHIPPED_MODEL

    moved = tmp_path / "moved_model"
    shutil.copytree(SHIPPED_MODEL, moved)
    corpus = write_corpus(tmp_path / "corpus.jsonl", demo_docs(2))
    store = tmp_path / "store"
    assert run("precompute", str(corpus), "--store", str(store), "--model", str(moved)).returncode == 0
    shutil.move(moved, tmp_path / "elsewhere")
    assert run("inspect", "--store", str(store)).returncode == 0  # the checkpoint is gone: no model needed
    out = run("query", "Where?", "--store", str(store), "--k", "1", "--max-new-tokens", "2")
    assert out.returncode == 2 and "is gone (moved or deleted)" in out.stderr and "--model" in out.stderr
    out = run("query", "Where?", "--store", str(store), "--k", "1", "--max-new-tokens", "2",
              "--model", str(tmp_path / "elsewhere"))
    assert out.returncode == 0, out.stderr


def test_yaml_config_unknown_keys_and_settings_the_store_fixed_are_refused(tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", demo_docs(2))
    (tmp_path / "cfg.yaml").write_text("seam: 4\nmax-segment-tokens: 48\n")
    store = tmp_path / "s"
    assert run("precompute", str(corpus), "--store", str(store), "--config", str(tmp_path / "cfg.yaml")).returncode == 0
    assert json.loads((store / "manifest.json").read_text())["seam_tokens"] == 4
    (tmp_path / "typo.yaml").write_text("seem: 4\n")
    out = run("precompute", str(corpus), "--store", str(tmp_path / "t"), "--config", str(tmp_path / "typo.yaml"))
    assert out.returncode == 2 and "unknown setting(s) seem" in out.stderr
    out = run("precompute", str(corpus), "--store", str(store), "--seam", "16")
    assert out.returncode == 2 and "built with seam 4" in out.stderr
    assert run("precompute", str(corpus), "--store", str(store), "--seam", "4").returncode == 0  # the same: fine


def test_config_file_is_read_and_flags_win(tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", demo_docs(2))
    (tmp_path / "cfg.toml").write_text('seam = 4\nmax-segment-tokens = 48\n')
    out = run("precompute", str(corpus), "--store", str(tmp_path / "s"), "--config", str(tmp_path / "cfg.toml"),
              "--seam", "6")
    assert out.returncode == 0, out.stderr
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["seam_tokens"] == 6 and manifest["max_segment_tokens"] == 48


def test_clear_errors(tmp_path):
    out = run("precompute", str(tmp_path / "missing.jsonl"), "--store", str(tmp_path / "s"))
    assert out.returncode == 2 and "corpus path does not exist" in out.stderr
    (tmp_path / "empty.txt").write_text("")
    out = run("precompute", str(tmp_path / "empty.txt"), "--store", str(tmp_path / "s2"))
    assert out.returncode == 2 and "corpus file is empty" in out.stderr
    out = run("query", "q", "--store", str(tmp_path))
    assert out.returncode == 2 and "is not a hypic_rag store" in out.stderr
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{oops")
    out = run("inspect", "--store", str(tmp_path / "bad"))
    assert out.returncode == 2 and "unreadable" in out.stderr


def test_sigkill_mid_precompute_loses_nothing_committed(tmp_path):
    docs = demo_docs()
    corpus = write_corpus(tmp_path / "corpus.jsonl", docs)
    store = tmp_path / "store"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(CLI + ["precompute", str(corpus), "--store", str(store), "--batch-size", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 240
    while indexed(store) < 6 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    committed = indexed(store)
    assert 6 <= committed < len(docs), "the run must be killed part-way"
    out = run("precompute", str(corpus), "--store", str(store), "--batch-size", "8")
    assert out.returncode == 0, out.stderr
    report = " ".join(out.stderr.split())  # rich wraps the line at 80 columns when piped
    assert f"{len(docs)} segments ({len(docs) - committed} indexed now" in report
    assert indexed(store) == len(docs)
    reused = int(report.split(" entries computed, ")[1].split(" reused")[0])
    computed = int(report.split(" retired): ")[1].split(" entries computed")[0])
    assert computed + reused == len(docs) - committed
    name = docs[-1]["title"]
    out = run("query", f"What is the home city of {name}?", "--store", str(store), "--k", "1", "--max-new-tokens", "2")
    assert out.returncode == 0 and f"[0] {name}#0" in out.stdout


def test_parallel_workers_give_the_same_entries(tmp_path):
    from hypic_rag.api import HypicRAG

    corpus = write_corpus(tmp_path / "c.jsonl", demo_docs(6))
    runs = [("serial", ["--workers", "1"]), ("parallel", ["--workers", "2"]), ("ray", ["--workers", "2", "--ray"])]
    for name, flags in runs:
        out = run("precompute", str(corpus), "--store", str(tmp_path / name), *flags, "--batch-size", "3")
        assert out.returncode == 0, out.stderr
        assert "6 entries computed" in out.stderr
    serial = HypicRAG.from_store(tmp_path / "serial", read_only=True)
    for other in ("parallel", "ray"):
        _same_entries(serial, HypicRAG.from_store(tmp_path / other, read_only=True))
    answer = run("query", "What is the home city of the first person?", "--store", str(tmp_path / "ray"), "--max-new-tokens", "4")
    assert answer.returncode == 0, answer.stderr


def _same_entries(serial, parallel):
    from hypic_rag.store.serde import entry_to_bytes

    for record in serial.index.records():
        a, b = serial.store.disk.raw(record.key), parallel.store.disk.raw(record.key)
        assert a is not None and b is not None
        assert entry_to_bytes(serial.store.get(record.key)) == a
        assert serial.store.get(record.key).token_ids == parallel.store.get(record.key).token_ids
        sa, pa = serial.store.get(record.key), parallel.store.get(record.key)
        for x, y in zip(sa.linear, pa.linear):
            assert (x.interior_state - y.interior_state).abs().max() < 1e-5


def test_ctrl_c_ends_a_command_without_a_traceback(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.jsonl", demo_docs())
    store = tmp_path / "store"
    proc = subprocess.Popen(CLI + ["precompute", str(corpus), "--store", str(store), "--batch-size", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"),
                            # as a terminal starts it: the suite's process may ignore SIGINT (its children inherit that)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 240
    while indexed(store) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "hypic-rag: interrupted" in err and "Traceback" not in err, err[-2000:]


def test_diagnose_prints_a_layer_table_and_json(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.jsonl", demo_docs(4))
    store = tmp_path / "store"
    assert run("precompute", str(corpus), "--store", str(store)).returncode == 0
    question = f"What is the home city of {demo_docs(4)[1]['title']}?"
    out = run("diagnose", question, "--store", str(store), "--k", "3", "--mode", "pic_addition", "--threshold", "0.01")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("pic_addition: hidden-state error vs full recompute") and "first layer over" in out.stdout
    assert all(len(line) <= 80 for line in out.stdout.splitlines())
    out = run("diagnose", question, "--store", str(store), "--json")
    report = json.loads(out.stdout)
    assert report["mode"] == "hypic" and report["threshold"] == 0.05 and len(report["layers"]) == 8
    assert run("diagnose", question, "--store", str(store), "--mode", "full_recompute").returncode == 2  # argparse
