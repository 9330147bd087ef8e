"""Frozen, validated configuration for the executor."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from hypic_rag.errors import RequestError


class Mode(str, Enum):
    """The ablation ladder, cheapest-and-exact first, then from least to most accurate cached mode."""

    FULL_RECOMPUTE = "full_recompute"
    PREFIX_CACHE = "prefix_cache"
    PIC_ADDITION = "pic_addition"
    PIC_TRANSITION = "pic_transition"
    PIC_TRANSITION_ROPE = "pic_transition_rope"
    HYPIC = "hypic"
    HYPIC_ADAPTIVE = "hypic_adaptive"

    @property
    def rung(self) -> "Rung":
        """What this mode does with cached segments (one row of LADDER)."""
        return LADDER[self]

    @classmethod
    def parse(cls, value: "Mode | str") -> "Mode":
        """A Mode from its value, or RequestError naming the modes."""
        if isinstance(value, Mode):
            return value
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(m.value for m in cls)
            raise RequestError(f"unknown mode {value!r}; choose one of: {names}") from None


@dataclass(frozen=True)
class Rung:
    """One rung of the ablation ladder: what a request does with the segments it is given.

    segment_cache: entries come from the segment store and are composed (False: a prefill).
    prefix_reuse: (prefill rungs) restore the longest exactly-seen prefix of segments first.
    operator: compose linear states by S <- M S + E (False: add zero-start end states).
    rotate_keys: re-rotate cached keys to their real offsets (False: every segment at position 0).
    seams: recompute each later segment's first w tokens with the true context, and take the first
        segment's exact end state (hypic); entries are then built with that seam.
    adaptive: (hypic_adaptive) and then recompute the K/V of the cached tokens the question reads most,
        within the executor's recompute_budget (executor/adaptive_recompute.py); same entries as hypic.
    """

    segment_cache: bool
    prefix_reuse: bool
    operator: bool
    rotate_keys: bool
    seams: bool
    adaptive: bool = False


LADDER: dict[Mode, Rung] = {
    Mode.FULL_RECOMPUTE: Rung(segment_cache=False, prefix_reuse=False, operator=False, rotate_keys=False, seams=False),
    Mode.PREFIX_CACHE: Rung(segment_cache=False, prefix_reuse=True, operator=False, rotate_keys=False, seams=False),
    Mode.PIC_ADDITION: Rung(segment_cache=True, prefix_reuse=False, operator=False, rotate_keys=False, seams=False),
    Mode.PIC_TRANSITION: Rung(segment_cache=True, prefix_reuse=False, operator=True, rotate_keys=False, seams=False),
    Mode.PIC_TRANSITION_ROPE: Rung(segment_cache=True, prefix_reuse=False, operator=True, rotate_keys=True,
                                   seams=False),
    Mode.HYPIC: Rung(segment_cache=True, prefix_reuse=False, operator=True, rotate_keys=True, seams=True),
    Mode.HYPIC_ADAPTIVE: Rung(segment_cache=True, prefix_reuse=False, operator=True, rotate_keys=True, seams=True,
                              adaptive=True),
}


RUNTIMES = ("auto", "transformers", "lean")
INTERIOR_DTYPES = ("float32", "bfloat16")
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256


@dataclass(frozen=True)
class RequestOptions:
    """Everything that may change from one request to the next (ExecutorConfig holds the defaults).

    mode: the rung of the ladder to run (None: the executor's own).
    max_new_tokens: generation budget; temperature: 0 is greedy, > 0 samples; top_p: nucleus mass;
    seed: sampling seed (None: nondeterministic).
    stop: strings that end decoding as soon as the text holds one; the answer ends before it and the
        finish reason is "stop" (up to 16 strings of at most 256 characters).
    ignore_eos: decode exactly max_new_tokens tokens (throughput runs).
    """

    mode: Mode | None = None
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.mode is not None:
            object.__setattr__(self, "mode", Mode.parse(self.mode))
        if not isinstance(self.max_new_tokens, int) or isinstance(self.max_new_tokens, bool) or self.max_new_tokens < 1:
            raise RequestError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        _check_sampling(self.temperature, self.top_p, self.seed)
        object.__setattr__(self, "stop", _checked_stop(self.stop))
        if not isinstance(self.ignore_eos, bool):
            raise RequestError(f"ignore_eos must be True or False, got {self.ignore_eos!r}")


def _checked_stop(stop) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop):
        raise RequestError(f"stop must be a string or a list of non-empty strings, got {stop!r}")
    if len(stop) > MAX_STOP_STRINGS or any(len(s) > MAX_STOP_CHARS for s in stop):
        raise RequestError(f"stop takes at most {MAX_STOP_STRINGS} strings of at most {MAX_STOP_CHARS} characters")
    return tuple(dict.fromkeys(stop))


def _check_sampling(temperature, top_p, seed) -> None:
    for name, value in (("temperature", temperature), ("top_p", top_p)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise RequestError(f"{name} must be a finite number, got {value!r}")
    if temperature < 0:
        raise RequestError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if not 0 < top_p <= 1:
        raise RequestError(f"top_p must be in (0, 1], got {top_p}")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise RequestError(f"seed must be an integer or None, got {seed!r}")


@dataclass(frozen=True)
class ExecutorConfig:
    """How a request is executed.

    mode: which rung of the ablation ladder runs by default (default: hypic); a request may ask for
        another in its RequestOptions.
    seam_tokens: w, the tokens recomputed at the start of every cached segment after the first
        (hypic only; the other cached modes precompute and compose with w = 0).
    max_new_tokens, temperature, top_p, seed: the defaults of each request's RequestOptions.
    prefix_cache_entries: how many segment-boundary snapshots the prefix_cache mode keeps.
    miss_batch_size: a request's cache misses of equal length are precomputed together, this many
        per batched forward (1: one forward per miss).
    miss_batch_tokens: on the lean runtime, a request's misses of any lengths are precomputed in one
        forward of up to this many tokens (more misses: a forward per this many tokens).
    batched_seams: recompute every seam of a request in one layer-major forward where the model
        supports it (every supported hybrid), with the question in the same forward; False runs one forward
        per segment, then the question. Same result.
    runtime: "transformers" runs every request through transformers' forward; "lean" runs full
        prefill, the prefix_cache baseline (the uncovered rest in one forward), the hypic rung and
        decoding on the lean runtime (runtime/: ported families only,
        qwen3_5, qwen3_next, bamba, granitemoehybrid, falcon_h1; other requests and rungs stay on transformers), "auto" (default) is lean on a CUDA
        device where the family is ported (a small request there is launch-bound) and transformers
        elsewhere (on CPU the transformers seam pass is as fast). Same results to ~1e-6.
    interior_dtype: "float32" (default) or "bfloat16": the dtype entries keep the interior state E and
        the operator M in (composition still runs in fp32). bfloat16 halves them, a third of an entry
        on a large model (bench/results/entry_bytes.md measures the size and the first-token KL); the
        store's fingerprint records it.
    recompute_budget: hypic_adaptive's share of a request's segment tokens recomputed with their
        real context, seams included (default 0.15; what the seams leave goes to the tokens the
        question reads most).
    cuda_graphs: on the lean runtime on CUDA, replay each hypic request's forward as its shape
        bucket's CUDA graph (runtime/request_graphs.py; a bucket's first request runs eagerly, its
        second captures). False runs every request eagerly (no graph memory). Same results.
    compile_graphs: on the lean runtime, compile (torch.compile, inductor) what the CUDA graphs
        capture, each hypic bucket's forward and the decode step, so a replay runs a few fused
        kernels instead of a thousand small ones (runtime/compiled.py; each new bucket or decode
        capacity compiles once, seconds to a minute on a large model, and a bucket's compile holds
        the runtime's request lock, as its capture does). Default False: not yet timed on a GPU
        (bench/cuda_graph_ttft.py --compile measures it). Same results to ~1e-6 in fp32 on CPU; on
        CUDA every fp32 product of the compiled function may use TF32.
    """

    mode: Mode = Mode.HYPIC
    seam_tokens: int = 8
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    prefix_cache_entries: int = 256
    miss_batch_size: int = 8
    miss_batch_tokens: int = 32768
    batched_seams: bool = True
    runtime: str = "auto"
    interior_dtype: str = "float32"
    cuda_graphs: bool = True
    compile_graphs: bool = False
    recompute_budget: float = 0.15

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", Mode.parse(self.mode))
        if self.interior_dtype not in INTERIOR_DTYPES:
            raise RequestError(f"interior_dtype must be one of {', '.join(INTERIOR_DTYPES)}, got {self.interior_dtype!r}")
        if not isinstance(self.seam_tokens, int) or isinstance(self.seam_tokens, bool) or self.seam_tokens < 0:
            raise RequestError(f"seam_tokens must be an integer >= 0, got {self.seam_tokens!r}")
        if not isinstance(self.max_new_tokens, int) or isinstance(self.max_new_tokens, bool) or self.max_new_tokens < 0:
            raise RequestError(f"max_new_tokens must be an integer >= 0, got {self.max_new_tokens!r}")
        _check_sampling(self.temperature, self.top_p, self.seed)
        if not isinstance(self.prefix_cache_entries, int) or self.prefix_cache_entries < 1:
            raise RequestError(f"prefix_cache_entries must be an integer >= 1, got {self.prefix_cache_entries!r}")
        if not isinstance(self.batched_seams, bool):
            raise RequestError(f"batched_seams must be True or False, got {self.batched_seams!r}")
        if not isinstance(self.cuda_graphs, bool):
            raise RequestError(f"cuda_graphs must be True or False, got {self.cuda_graphs!r}")
        if not isinstance(self.compile_graphs, bool):
            raise RequestError(f"compile_graphs must be True or False, got {self.compile_graphs!r}")
        budget = self.recompute_budget
        if not isinstance(budget, (int, float)) or isinstance(budget, bool) or not 0 <= budget <= 1:
            raise RequestError(f"recompute_budget must be a share of the segments' tokens in [0, 1], got {budget!r}")
        if self.runtime not in RUNTIMES:
            raise RequestError(f"runtime must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        if not isinstance(self.miss_batch_size, int) or self.miss_batch_size < 1:
            raise RequestError(f"miss_batch_size must be an integer >= 1, got {self.miss_batch_size!r}")
        if not isinstance(self.miss_batch_tokens, int) or self.miss_batch_tokens < 1:
            raise RequestError(f"miss_batch_tokens must be an integer >= 1, got {self.miss_batch_tokens!r}")

    def request_options(self, **overrides) -> RequestOptions:
        """This config's per-request defaults (its mode and decoding), with the given fields (those not
        None) replaced."""
        fields = {"mode": self.mode, "max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                  "top_p": self.top_p, "seed": self.seed}
        fields.update({k: v for k, v in overrides.items() if v is not None})
        return RequestOptions(**fields)

    def seam_for(self, mode: Mode) -> int:
        """The seam entries are built with for `mode`: w for hypic, 0 for the other cached modes."""
        return self.seam_tokens if mode.rung.seams else 0

    @property
    def precompute_seam(self) -> int:
        """The seam size this config's own mode builds segment entries with."""
        return self.seam_for(self.mode)


@dataclass(frozen=True)
class PromptTemplate:
    """How documents and the question become prompt text.

    system: the shared prefix text (after the tokenizer's BOS, if add_bos); cached once, exactly.
    segment: format string for one segment, with {title} and {text}.
    question: format string for the final, never-cached piece, with {question}.
    """

    system: str = ""
    segment: str = "Document: {title}\n{text}\n"
    question: str = "Question: {question}\nAnswer:"
    add_bos: bool = True

    def __post_init__(self) -> None:
        for name, fields in (("segment", ("{text}",)), ("question", ("{question}",))):
            value = getattr(self, name)
            if any(f not in value for f in fields):
                raise RequestError(f"template {name!r} must contain {', '.join(fields)}; got {value!r}")

    def to_dict(self) -> dict:
        """The template as plain JSON values (what a store's manifest records)."""
        return {"system": self.system, "segment": self.segment, "question": self.question, "add_bos": self.add_bos}

    def segment_parts(self, title: str) -> tuple[str, str]:
        """The text a segment's template puts before and after its document text, for this title."""
        head, _, tail = self.segment.partition("{text}")
        return head.replace("{title}", title), tail.replace("{title}", title)

    def body_of(self, text: str, title: str) -> str:
        """The document text inside a segment's prompt text (the text itself when the template does
        not frame it)."""
        head, tail = self.segment_parts(title)
        if text.startswith(head) and text.endswith(tail) and len(text) >= len(head) + len(tail):
            return text[len(head): len(text) - len(tail)]
        return text

    def prefix_ids(self, tokenizer) -> tuple[int, ...]:
        """The shared prefix's token ids: the tokenizer's BOS (if add_bos) and the system text."""
        prefix = [tokenizer.bos_token_id] if self.add_bos and tokenizer.bos_token_id is not None else []
        prefix += tokenizer.encode(self.system, add_special_tokens=False) if self.system else []
        return tuple(prefix)
