"""HypicRAGLLM: a LlamaIndex CustomLLM. Prompts with stuffed segment text are served from the cache."""

from __future__ import annotations

from typing import Any, AsyncIterator, Iterator

from llama_index.core.llms import (
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    CustomLLM,
    LLMMetadata,
)
from llama_index.core.llms.callbacks import llm_completion_callback
from pydantic import Field, PrivateAttr

from llama_index_hypic_rag._engine import open_engine


class HypicRAGLLM(CustomLLM):
    """A LlamaIndex CustomLLM answering from a hypic_rag store (`rag=` or `store_dir=`); prompts with
    stuffed documents are served from the cache. Fields (overridable per call): mode, max_new_tokens,
    temperature, top_p, seed, stop, prompt_format ("store": the found documents and the query in the
    store's template, the default; "as_is": the prompt verbatim)."""
    store_dir: str | None = Field(default=None, description="store built by `hypic-rag precompute`")
    max_new_tokens: int = Field(default=64)
    mode: str | None = Field(default=None, description="rung of the ablation ladder (default: the store's)")
    temperature: float | None = Field(default=None, description="0 is greedy (default: the store's)")
    top_p: float | None = Field(default=None)
    seed: int | None = Field(default=None)
    stop: list[str] | None = Field(default=None, description="strings that end decoding (excluded from the text)")
    model_name: str = Field(default="hypic-rag")
    prompt_format: str = Field(default="store", description='"store": the documents found in the prompt and its '
                               'query in the store\'s own template (what its model was trained on); "as_is": verbatim')
    _rag: Any = PrivateAttr(default=None)

    def __init__(self, rag: Any = None, **data: Any) -> None:
        super().__init__(**data)
        self._rag = rag

    def engine(self):
        """The HypicRAG this LLM answers from (opened from store_dir on first use)."""
        self._rag = open_engine(self._rag, self.store_dir)
        return self._rag

    @property
    def metadata(self) -> LLMMetadata:
        """Context window (the model's positions), output budget and model name."""
        positions = self._rag.executor.spec.max_positions if self._rag is not None else 4096
        return LLMMetadata(context_window=positions or 4096, num_output=self.max_new_tokens,
                           model_name=self.model_name, is_chat_model=False)

    def _options(self, engine, kwargs: dict):
        """Per call, kwargs override the fields: mode, max_new_tokens (or max_tokens), temperature, top_p,
        seed, stop, timeout. A stop string ends decoding; the text ends before it."""
        return engine.options(
            mode=kwargs.get("mode", self.mode),
            max_new_tokens=kwargs.get("max_new_tokens", kwargs.get("max_tokens", self.max_new_tokens)),
            temperature=kwargs.get("temperature", self.temperature), top_p=kwargs.get("top_p", self.top_p),
            seed=kwargs.get("seed", self.seed), stop=kwargs.get("stop", self.stop) or None)

    @staticmethod
    def _response(text: str, item) -> CompletionResponse:
        if isinstance(item, str):
            return CompletionResponse(text=text, delta=item)
        metadata = item.to_dict()
        return CompletionResponse(text=text, delta="", raw=metadata, additional_kwargs=dict(metadata))

    def _responses(self, prompt: str, kwargs: dict) -> Iterator[CompletionResponse]:
        """The responses of one request (not a callback event of its own: each public method is one)."""
        engine = self.engine()
        text = ""
        for item in engine.stream_prompt(prompt, options=self._options(engine, kwargs), timeout=kwargs.get("timeout"),
                                         prompt_format=kwargs.get("prompt_format", self.prompt_format)):
            text += item if isinstance(item, str) else ""
            yield self._response(text, item)

    async def _aresponses(self, prompt: str, kwargs: dict) -> AsyncIterator[CompletionResponse]:
        engine = self.engine()
        text = ""
        async for item in engine.astream_prompt(prompt, options=self._options(engine, kwargs),
                                                timeout=kwargs.get("timeout"),
                                                prompt_format=kwargs.get("prompt_format", self.prompt_format)):
            text += item if isinstance(item, str) else ""
            yield self._response(text, item)

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """The completion of a prompt; raw carries the cache and timing figures."""
        *_, last = self._responses(prompt, kwargs)
        return last

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        """A response per text piece (text so far and the delta), then one carrying the QueryResult's
        fields (cache hits, timings) as raw / additional_kwargs."""
        return self._responses(prompt, kwargs)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """complete() for asyncio (native: the event loop never blocks)."""
        last = None
        async for last in self._aresponses(prompt, kwargs):
            pass
        return last

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False,
                               **kwargs: Any) -> CompletionResponseAsyncGen:
        """stream_complete() for asyncio; cancelling the task cancels the request."""
        return self._aresponses(prompt, kwargs)
