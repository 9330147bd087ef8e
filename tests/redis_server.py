"""A real redis-server for the tests: the one .ci/run starts (HYPIC_TEST_REDIS_URL), or one started
here on a free loopback port; tests that stop and restart a server get their own."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too and exists (<= 65535)."""
    import random

    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 55535)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair for a Redis Cluster node")


class RedisServer:
    """redis-server on 127.0.0.1:port, without persistence; stop() and start() keep the port."""

    def __init__(self, port: int | None = None):
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run installs it)")
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="hypic-redis-")
        self.process = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir, "--protected-mode", "yes", *getattr(self, "extra", [])],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 10
        while time.time() < deadline and self.process.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.process.kill()
        raise RuntimeError(f"redis-server did not start on port {self.port}: {self.process.communicate()[0][-800:]}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


_SHARED: list = []


def shared_redis_url() -> str:
    """The session's server: HYPIC_TEST_REDIS_URL (started by .ci/run) or one started here."""
    url = os.environ.get("HYPIC_TEST_REDIS_URL")
    if url:
        return url
    if not _SHARED:
        _SHARED.append(RedisServer())
    return _SHARED[0].url


def stop_shared() -> None:
    while _SHARED:
        _SHARED.pop().close()


class RedisClusterNodes:
    """Three redis-server nodes in cluster mode joined by `redis-cli --cluster create` (no replicas)."""

    def __init__(self):
        if shutil.which("redis-cli") is None:
            pytest.skip("redis-cli is not installed (it comes with Debian's redis-server)")
        self.nodes = []
        try:
            self._start()
        except BaseException:
            self.close()  # nodes already started must not outlive a failed start
            raise

    def _start(self) -> None:
        for _ in range(3):
            node = RedisServer.__new__(RedisServer)
            node.binary, node.port, node.process = shutil.which("redis-server"), free_cluster_port(), None
            if node.binary is None:
                pytest.skip("redis-server is not installed")
            node.dir = tempfile.mkdtemp(prefix="hypic-redis-cluster-")
            node.extra = ["--cluster-enabled", "yes", "--cluster-config-file", os.path.join(node.dir, "nodes.conf")]
            node.start()
            self.nodes.append(node)
        out = subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{n.port}" for n in self.nodes],
                              "--cluster-replicas", "0", "--cluster-yes"], capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {out.stdout[-500:]} {out.stderr[-500:]}")
        deadline = time.time() + 20
        while time.time() < deadline:  # the cluster state turns ok once every node agrees on the slots
            info = subprocess.run(["redis-cli", "-p", str(self.nodes[0].port), "cluster", "info"],
                                  capture_output=True, text=True).stdout
            if "cluster_state:ok" in info:
                return
            time.sleep(0.2)
        raise RuntimeError("the test Redis Cluster did not reach cluster_state:ok")

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}/0"

    def close(self) -> None:
        for node in self.nodes:
            node.close()
