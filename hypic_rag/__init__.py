"""hypic_rag: position-independent segment caching for hybrid-attention LLMs in RAG."""

from hypic_rag._cpu_guard import block_fla_without_cuda

block_fla_without_cuda()

from hypic_rag.config import ExecutorConfig, Mode  # noqa: E402
from hypic_rag.engine import HypicExecutor, StreamEvent  # noqa: E402
from hypic_rag.types import GenerationResult, SegmentEntry, Timings  # noqa: E402

__all__ = ["ExecutorConfig", "GenerationResult", "HypicExecutor", "Mode", "SegmentEntry", "StreamEvent", "Timings"]
__version__ = "0.1.0"
