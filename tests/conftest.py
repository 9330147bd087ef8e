import pytest
import torch

import hypic_rag  # noqa: F401  (blocks fla on CPU before transformers models import)
from hypic_rag.models.tiny import tiny_model

HYBRIDS = ["qwen3_5", "qwen3_next", "falcon_h1", "bamba", "kimi_linear", "lfm2", "olmo_hybrid", "bailing_hybrid",
           "nemotron_h", "zamba2", "minimax"]

_MODELS: dict[str, torch.nn.Module] = {}


def get_model(family: str) -> torch.nn.Module:
    if family not in _MODELS:
        _MODELS[family] = tiny_model(family)
    return _MODELS[family]


@pytest.fixture(scope="session")
def tokenizer():
    """The shipped small model's tokenizer."""
    from transformers import AutoTokenizer

    from hypic_rag.api import SHIPPED_MODEL

    return AutoTokenizer.from_pretrained(SHIPPED_MODEL)


@pytest.fixture(params=HYBRIDS)
def hybrid(request):
    return request.param, get_model(request.param)


def random_ids(lengths, seed=0, vocab=128):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


SHIPPED = None


def shipped_model():
    """The small trained model the package ships (loaded once)."""
    global SHIPPED
    if SHIPPED is None:
        from hypic_rag.api import SHIPPED_MODEL, load_model

        SHIPPED = load_model(SHIPPED_MODEL, device="cpu")
    return SHIPPED


def demo_docs(n=None):
    import json

    from hypic_rag.cli.demo import DEMO_DIR

    docs = [json.loads(l) for l in (DEMO_DIR / "corpus.jsonl").read_text().splitlines() if l.strip()]
    return docs if n is None else docs[:n]


_DEMO_RAG = {}


def demo_rag(n_docs=12):
    """A HypicRAG over the first n demo documents in a temporary store, built once per session."""
    if n_docs not in _DEMO_RAG:
        import tempfile

        from hypic_rag.api import SHIPPED_MODEL, HypicRAG

        directory = tempfile.mkdtemp(prefix="hypic-test-store-")
        rag = HypicRAG.create(directory, model=SHIPPED_MODEL)  # records the path: reopenable by store_dir
        rag.ingest(demo_docs(n_docs))
        _DEMO_RAG[n_docs] = rag
    return _DEMO_RAG[n_docs]


@pytest.fixture(scope="session")
def redis_url():
    """A real Redis for the tier tests (see redis_server.py)."""
    from redis_server import shared_redis_url, stop_shared

    yield shared_redis_url()
    stop_shared()


@pytest.fixture
def own_redis():
    """A redis-server this test may stop and restart."""
    from redis_server import RedisServer

    server = RedisServer()
    yield server
    server.close()
