"""Cache-miss prefill on Ray: actors, each holding its own copy of the model, compute segment entries.

Used for a request's misses (`HypicRAG.use_ray`, or `HypicExecutor(miss_prefill=RayPrefill(...))`)
and for corpus precompute (`hypic-rag precompute --ray`). Each actor loads the checkpoint from a
path every node can read, builds an executor with the caller's config and shared prefix, and must
report the caller's fingerprint (same weights, dtype, seam and prefix) before it gets work. Misses
are grouped by length (equal lengths share a batched forward inside an actor) and the groups are
spread over the actors by token count. Entries travel as hypic_rag's checksummed safetensors bytes,
never as pickled tensors, and the caller checks every entry's fingerprint again before storing it.

    prefill = RayPrefill("path/to/checkpoint", executor.config, executor.shared_prefix,
                         RayConfig(workers=2))                      # local cluster in this process
    prefill = RayPrefill(..., RayConfig(workers=8, address="ray://head:10001"))   # a real cluster
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch

from hypic_rag.config import ExecutorConfig
from hypic_rag.errors import MissingDependencyError, RequestError
from hypic_rag.executor.miss_prefill import length_batches
from hypic_rag.store.serde import entry_from_bytes, entry_to_bytes
from hypic_rag.types import SegmentEntry

if TYPE_CHECKING:
    from hypic_rag.engine import HypicExecutor


@dataclass(frozen=True)
class RayConfig:
    """Where and how many prefill workers run.

    workers: number of actors (each loads the model once).
    address: None starts a local Ray cluster inside this process (stopped again by close());
        "auto" or "ray://host:port" joins a running cluster.
    cpus_per_worker / gpus_per_worker: Ray resources each actor reserves; with gpus_per_worker > 0
        the actor's model runs on CUDA.
    threads_per_worker: torch intra-op threads in each actor.
    object_store_bytes: object store size of a local cluster (ignored when joining one).
    startup_timeout_s: how long to wait for every actor to load the model (an actor the cluster has
        no room for would otherwise wait forever).
    """

    workers: int = 2
    address: str | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    threads_per_worker: int = 1
    object_store_bytes: int = 256 * 2**20
    startup_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if not isinstance(self.workers, int) or self.workers < 1:
            raise RequestError(f"workers must be an integer >= 1, got {self.workers!r}")
        if self.cpus_per_worker <= 0 or self.gpus_per_worker < 0:
            raise RequestError("cpus_per_worker must be > 0 and gpus_per_worker >= 0")
        if not isinstance(self.threads_per_worker, int) or self.threads_per_worker < 1:
            raise RequestError(f"threads_per_worker must be an integer >= 1, got {self.threads_per_worker!r}")
        if self.startup_timeout_s <= 0:
            raise RequestError(f"startup_timeout_s must be > 0, got {self.startup_timeout_s!r}")
        if self.object_store_bytes < 64 * 2**20:
            raise RequestError("object_store_bytes must be at least 64 MiB "
                               "(Ray's minimum is 75 MB for a local cluster)")


class _PrefillWorker:
    """The actor body: one model and one executor; turns token-id lists into entry bytes."""

    def __init__(self, model_path: str, dtype: str, device: str, config: ExecutorConfig,
                 shared_prefix: tuple[int, ...], threads: int):
        torch.set_num_threads(threads)
        import hypic_rag  # noqa: F401  (CPU guard before transformers' modeling modules)
        from hypic_rag.models.loader import LoadedModel
        from hypic_rag.engine import HypicExecutor

        loaded = LoadedModel.load(model_path, dtype=getattr(torch, dtype), device=device)
        self.executor = HypicExecutor(loaded, None, config, shared_prefix)

    def fingerprint(self) -> str:
        return self.executor.fingerprint.to_string()

    def precompute(self, segments: list[tuple[int, ...]]) -> list[bytes]:
        return [entry_to_bytes(e) for e in self.executor.precompute_many(segments)]


def _ray():
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError("Ray prefill needs the ray package: pip install 'hypic-rag[ray]'") from exc
    return ray


class RayPrefill:
    """A miss prefill (see hypic_rag.executor.miss_prefill) backed by Ray actors."""

    def __init__(self, model_path: str | Path, config: ExecutorConfig, shared_prefix: Sequence[int],
                 ray_config: RayConfig | None = None, dtype: torch.dtype = torch.float32,
                 expected_fingerprint: str | None = None):
        ray = _ray()
        self.ray_config = ray_config or RayConfig()
        self.max_batch = config.miss_batch_size
        path = Path(model_path)
        if not (path / "config.json").is_file():
            raise RequestError(f"Ray workers load the model from a checkpoint directory; none at {path}")
        self._owns_cluster = False
        if not ray.is_initialized():
            if self.ray_config.address is None:
                ray.init(num_cpus=max(os.cpu_count() or 1, math.ceil(self.ray_config.workers * self.ray_config.cpus_per_worker)),
                         object_store_memory=self.ray_config.object_store_bytes, include_dashboard=False,
                         log_to_driver=False)
            else:
                ray.init(address=self.ray_config.address, log_to_driver=False)
            self._owns_cluster = True
        device = "cuda" if self.ray_config.gpus_per_worker > 0 else "cpu"
        actor = ray.remote(_PrefillWorker).options(num_cpus=self.ray_config.cpus_per_worker,
                                                   num_gpus=self.ray_config.gpus_per_worker)
        dtype_name = str(dtype).removeprefix("torch.")
        self.actors = [
            actor.remote(str(path.resolve()), dtype_name, device, config, tuple(shared_prefix),
                         self.ray_config.threads_per_worker)
            for _ in range(self.ray_config.workers)
        ]
        try:
            fingerprints = set(ray.get([a.fingerprint.remote() for a in self.actors],
                                       timeout=self.ray_config.startup_timeout_s))
        except ray.exceptions.GetTimeoutError:
            free = ray.available_resources()
            self.close()
            raise RequestError(
                f"{self.ray_config.workers} Ray workers ({self.ray_config.cpus_per_worker} CPU, "
                f"{self.ray_config.gpus_per_worker} GPU each) did not start within {self.ray_config.startup_timeout_s} s; "
                f"the cluster has {free} free. Ask for fewer workers or resources per worker"
            ) from None
        if expected_fingerprint is not None and fingerprints != {expected_fingerprint}:
            self.close()
            raise RequestError(
                f"Ray workers loaded {sorted(fingerprints)} from {path}, but the caller runs {expected_fingerprint}; "
                "give the workers the same checkpoint, dtype, seam size and shared prefix"
            )
        self.fingerprint = fingerprints.pop()

    @classmethod
    def for_executor(cls, executor: "HypicExecutor", model_path: str | Path,
                     ray_config: RayConfig | None = None) -> "RayPrefill":
        """Workers matching `executor` (its config, shared prefix and dtype), checked by fingerprint."""
        return cls(model_path, executor.config, executor.shared_prefix, ray_config, executor.dtype,
                   expected_fingerprint=executor.fingerprint.to_string())

    def shares(self, segments: list[tuple[int, ...]], max_batch: int) -> list[list[int]]:
        """Indices per actor: length groups (no larger than an even split over the actors, so one long
        group still uses every actor) handed out largest first to the least-loaded actor."""
        loads = [0] * len(self.actors)
        shares: list[list[int]] = [[] for _ in self.actors]
        even = max(1, math.ceil(len(segments) / len(self.actors)))
        groups = length_batches(segments, min(max_batch, even))
        groups = sorted(groups, key=lambda g: -sum(len(segments[i]) for i in g))
        for group in groups:
            target = loads.index(min(loads))
            shares[target] += group
            loads[target] += sum(len(segments[i]) for i in group)
        return shares

    def __call__(self, segments: list[tuple[int, ...]]) -> list[SegmentEntry]:
        ray = _ray()
        shares = [s for s in self.shares(segments, self.max_batch) if s]
        futures = [actor.precompute.remote([segments[i] for i in share]) for actor, share in zip(self.actors, shares)]
        out: list[SegmentEntry | None] = [None] * len(segments)
        for share, blobs in zip(shares, ray.get(futures)):
            for i, blob in zip(share, blobs):
                out[i] = entry_from_bytes(blob)
        return out  # type: ignore[return-value]

    def close(self) -> None:
        ray = _ray()
        if ray.is_initialized():  # after a shutdown elsewhere the actors are gone already
            for actor in getattr(self, "actors", []):
                ray.kill(actor)
        self.actors = []
        if self._owns_cluster and ray.is_initialized():
            ray.shutdown()
        self._owns_cluster = False

    def __enter__(self) -> "RayPrefill":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
