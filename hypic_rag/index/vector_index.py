"""The FAISS half of the segment index: which index type a corpus of a given size gets, how it is
trained, and the state that rebuilds it, kept in SQLite beside the records (never a FAISS file).

Below `IndexConfig.flat_below` segments the search is exact (flat inner product). Above it, IVF-Flat
(the vectors scanned in `nprobe` of `nlist` k-means lists), and from `pq_from` IVF-PQ (each vector
compressed to `pq_bytes` bytes, for corpora whose vectors no longer fit in memory). An IVF index is
trained on a sample, grows incrementally (new vectors join their nearest list), and is retrained
when the corpus has grown `retrain_growth` times past the size it was trained at or auto's choice
of type changes.

FAISS's own files trust the sizes they declare, so a crafted one can corrupt memory: the persisted
state here is plain arrays whose shapes, values and ranges are checked before FAISS sees them
(`TrainedState.check`, `VectorIndex.load`); anything that fails is retrained from the embeddings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from hypic_rag.errors import RequestError

KINDS = ("auto", "flat", "ivf_flat", "ivf_pq")
MIN_POINTS_PER_LIST = 39  # FAISS's k-means wants at least this many training points per centroid


def _faiss():
    import faiss

    return faiss


@dataclass(frozen=True)
class IndexConfig:
    """How the FAISS index is chosen, trained and searched (see the module docstring)."""

    kind: str = "auto"
    flat_below: int = 100_000  # auto: exact search below this many segments
    pq_from: int = 2_000_000  # auto: IVF-PQ from this many segments (pq_bytes per vector instead of 4 x dim)
    nlist: int = 0  # IVF lists; 0: about sqrt(segments), a power of two
    nprobe: int = 32  # lists scanned per query
    pq_bytes: int = 48  # IVF-PQ code bytes per vector; must divide the embedding dimension
    train_per_list: int = 64  # training sample: this many points per list (FAISS wants >= 39)
    retrain_growth: float = 4.0  # retrain once the corpus is this many times the size trained at
    refine: int = 32  # IVF-PQ: rescore this many candidates per hit exactly (from the stored embeddings)
    use_gpu: bool = True  # search on a GPU when GPU FAISS and a GPU are present

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise RequestError(f"index kind must be one of {', '.join(KINDS)}; got {self.kind!r}")
        for name, low in (("flat_below", 0), ("pq_from", 0), ("nlist", 0), ("nprobe", 1), ("pq_bytes", 1),
                          ("train_per_list", MIN_POINTS_PER_LIST), ("refine", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise RequestError(f"index {name} must be an integer >= {low}; got {value!r}")
        if not isinstance(self.retrain_growth, (int, float)) or not self.retrain_growth > 1:
            raise RequestError(f"index retrain_growth must be a number > 1; got {self.retrain_growth!r}")

    def kind_for(self, n: int) -> str:
        """The index type for n vectors: flat until IVF can be trained on them."""
        kind = self.kind
        if kind == "auto":
            kind = "flat" if n < self.flat_below else ("ivf_pq" if n >= self.pq_from else "ivf_flat")
        if kind != "flat" and n < MIN_POINTS_PER_LIST * self.lists_for(n):
            return "flat"
        return kind

    def lists_for(self, n: int) -> int:
        if self.nlist:
            return self.nlist
        return int(min(65536, max(16, 2 ** round(math.log2(max(math.sqrt(max(n, 1)), 1))))))

    def check_dim(self, dim: int) -> None:
        """An explicit IVF-PQ needs pq_bytes to divide the dimension (auto takes the nearest divisor below)."""
        if self.kind == "ivf_pq" and dim % self.pq_bytes:
            raise RequestError(f"index pq_bytes ({self.pq_bytes}) must divide the embedding dimension ({dim}); "
                               f"pick one of {[b for b in range(1, dim + 1) if dim % b == 0 and b <= 128]}")

    def pq_bytes_for(self, dim: int) -> int:
        return max(b for b in range(1, min(self.pq_bytes, dim) + 1) if dim % b == 0)


@dataclass(frozen=True)
class TrainedState:
    """What an IVF index needs besides its vectors: the coarse centroids (and PQ codebooks)."""

    kind: str
    generation: int
    trained_rows: int
    centroids: np.ndarray  # (nlist, dim) float32
    pq_centroids: np.ndarray | None  # (M, 256, dim // M) float32 for ivf_pq

    @property
    def nlist(self) -> int:
        return len(self.centroids)

    def check(self, dim: int) -> bool:
        """Shapes, dtypes and finiteness as this dimension needs (a crafted state must not reach FAISS)."""
        c, pq = self.centroids, self.pq_centroids
        if self.kind not in ("ivf_flat", "ivf_pq") or c.dtype != np.float32 or c.ndim != 2 or c.shape[1] != dim:
            return False
        if not 1 <= len(c) <= 65536 or not np.isfinite(c).all() or self.trained_rows < 1:
            return False
        if self.kind == "ivf_flat":
            return pq is None
        return (pq is not None and pq.dtype == np.float32 and pq.ndim == 3 and pq.shape[1] == 256
                and pq.shape[0] * pq.shape[2] == dim and bool(np.isfinite(pq).all()))


class VectorIndex:
    """One FAISS index over (row id, vector) pairs of one type, built from a TrainedState or flat."""

    def __init__(self, dim: int, config: IndexConfig, state: TrainedState | None = None):
        self.dim, self.config, self.state = dim, config, state
        self.index = self._empty()
        self._gpu = None

    @property
    def kind(self) -> str:
        return "flat" if self.state is None else self.state.kind

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def code_size(self) -> int:
        """Bytes a vector's persisted code takes (0: the code is the embedding itself)."""
        return int(self.index.code_size) if self.kind == "ivf_pq" else 0

    def _empty(self):
        faiss = _faiss()
        if self.state is None:
            return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        quantizer = faiss.IndexFlatIP(self.dim)
        quantizer.add(self.state.centroids)
        if self.state.kind == "ivf_flat":
            index = faiss.IndexIVFFlat(quantizer, self.dim, self.state.nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            pq = self.state.pq_centroids
            index = faiss.IndexIVFPQ(quantizer, self.dim, self.state.nlist, pq.shape[0], 8, faiss.METRIC_INNER_PRODUCT)
            faiss.copy_array_to_vector(np.ascontiguousarray(pq).ravel(), index.pq.centroids)
            index.pq.sync_transposed_centroids()
        index.is_trained = True
        index.nprobe = min(self.config.nprobe, self.state.nlist)
        if self.state.kind == "ivf_pq":
            index.precompute_table()
        return index

    @staticmethod
    def train(dim: int, config: IndexConfig, vectors: np.ndarray, generation: int, seed: int = 0) -> TrainedState | None:
        """Train the type config.kind_for(len(vectors)) on a sample of them (None: flat needs none)."""
        faiss = _faiss()
        n = len(vectors)
        kind = config.kind_for(n)
        if kind == "flat":
            return None
        nlist = config.lists_for(n)
        rng = np.random.default_rng(seed)
        take = min(n, max(config.train_per_list * nlist, 256 * MIN_POINTS_PER_LIST if kind == "ivf_pq" else 0))
        sample = vectors if take == n else vectors[np.sort(rng.choice(n, take, replace=False))]
        sample = np.ascontiguousarray(sample, dtype=np.float32)
        quantizer = faiss.IndexFlatIP(dim)
        if kind == "ivf_flat":
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            config.check_dim(dim)
            index = faiss.IndexIVFPQ(quantizer, dim, nlist, config.pq_bytes_for(dim), 8, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.train(sample)
        centroids = quantizer.reconstruct_n(0, nlist).astype(np.float32)
        pq = None
        if kind == "ivf_pq":
            pq = faiss.vector_to_array(index.pq.centroids).astype(np.float32).reshape(
                index.pq.M, index.pq.ksub, index.pq.dsub)
        return TrainedState(kind, generation, n, centroids, pq)

    def needs_training(self, n: int) -> bool:
        """Does a corpus of n vectors want another type, or has it outgrown its training?"""
        wanted = self.config.kind_for(n)
        if self.kind == "flat":
            return wanted != "flat"
        if wanted == "flat":  # shrunk: back to flat only well below the threshold (no flapping)
            return n < self.config.flat_below // 2 or self.config.kind == "flat"
        return wanted != self.kind or n >= self.config.retrain_growth * self.state.trained_rows

    def encode(self, vectors: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(list numbers, PQ codes) of vectors under this state: what SQLite keeps beside each row."""
        if self.state is None:
            return None, None
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        _, assign = self.index.quantizer.search(x, 1)
        lists = assign[:, 0].astype(np.int64)
        if self.kind != "ivf_pq":
            return lists, None
        codes = np.empty((len(x), self.index.code_size), dtype=np.uint8)
        self.index.encode_vectors(len(x), _faiss().swig_ptr(x), _faiss().swig_ptr(lists), _faiss().swig_ptr(codes))
        return lists, codes

    def load(self, rows: np.ndarray, lists: np.ndarray | None, codes: np.ndarray) -> bool:
        """Fill an empty index from persisted rows: codes are the float32 vectors (flat, IVF-Flat) or
        PQ codes (IVF-PQ). False, with nothing added, when the pieces disagree with this state."""
        faiss = _faiss()
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        width = self.code_size or 4 * self.dim
        codes = np.ascontiguousarray(codes).view(np.uint8).reshape(len(codes), -1) if len(codes) else codes
        if len(codes) != len(rows) or (len(rows) and codes.shape[1] != width):
            return False
        if self.state is None:
            if len(rows):
                self.index.add_with_ids(codes.view(np.float32).reshape(len(rows), self.dim), rows)
            return True
        lists = np.asarray(lists, dtype=np.int64)
        if len(lists) != len(rows) or (len(lists) and (lists.min() < 0 or lists.max() >= self.state.nlist)):
            return False
        order = np.argsort(lists, kind="stable")
        rows, lists, codes = rows[order], lists[order], np.ascontiguousarray(codes[order])
        bounds = np.searchsorted(lists, np.arange(self.state.nlist + 1))
        for l in range(self.state.nlist):
            a, b = int(bounds[l]), int(bounds[l + 1])
            if b > a:
                self.index.invlists.add_entries(l, b - a, faiss.swig_ptr(rows[a:b]), faiss.swig_ptr(codes[a:b]))
        self.index.ntotal = len(rows)
        self._gpu = None
        return True

    def add(self, rows: np.ndarray, vectors: np.ndarray, lists: np.ndarray | None) -> None:
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        if self.state is None:
            self.index.add_with_ids(x, rows)
        else:
            lists = np.ascontiguousarray(lists, dtype=np.int64)
            self.index.add_core(len(x), _faiss().swig_ptr(x), _faiss().swig_ptr(rows), _faiss().swig_ptr(lists))
        self._gpu = None

    def remove(self, rows: np.ndarray) -> None:
        self.index.remove_ids(np.ascontiguousarray(rows, dtype=np.int64))
        self._gpu = None

    def _searcher(self):
        faiss = _faiss()
        if (self._gpu is None and self.config.use_gpu and hasattr(faiss, "StandardGpuResources")
                and faiss.get_num_gpus() > 0):
            self._gpu = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, self.index)
        return self._gpu or self.index

    def search(self, vectors: np.ndarray, k: int, exact=None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, row ids) of the top k per query; row -1 where fewer than k were found.

        exact(rows) -> (len(rows), dim) float32: the stored embeddings of those rows. With it, an
        IVF-PQ search takes refine x k candidates by their compressed codes and rescores them exactly."""
        q = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.kind != "ivf_pq" or exact is None or self.config.refine == 1:
            return self._searcher().search(q, k)
        _, candidates = self._searcher().search(q, k * self.config.refine)
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        rows = np.full((len(q), k), -1, dtype=np.int64)
        for i, cand in enumerate(candidates):
            cand = cand[cand >= 0]
            if len(cand):
                exact_scores = exact(cand) @ q[i]
                best = np.argsort(-exact_scores, kind="stable")[:k]
                scores[i, :len(best)], rows[i, :len(best)] = exact_scores[best], cand[best]
        return scores, rows
