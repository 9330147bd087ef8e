"""HypicRAGLLM: a plain-text LangChain LLM over hypic_rag (prompt text in, completion out)."""

from __future__ import annotations

from typing import Any, AsyncIterator, Iterator

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LLM
from langchain_core.outputs import Generation, GenerationChunk, LLMResult

from langchain_hypic_rag._engine import HypicEngineMixin, arun_generation, run_generation, usage_metadata


class HypicRAGLLM(HypicEngineMixin, LLM):
    """A LangChain text-completion LLM answering from a hypic_rag store (prompt text in, completion
    out); stored segments found in the prompt come from the cache. Per call: segment_ids, mode,
    max_tokens, temperature, top_p, seed, stop, timeout, prompt_format ("store", the default: the found documents
    and the prompt's question in the store's template; "as_is": the prompt verbatim). The last chunk's generation_info carries the cache and
    timing figures, usage_metadata (with the cached prompt tokens) and model_name."""

    mode: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    timeout: float | None = None

    @property
    def _llm_type(self) -> str:
        return "hypic-rag"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"mode": self.mode, "store_dir": self.store_dir}

    def _request(self, prompt: str, stop: list[str] | None, kwargs: dict) -> dict:
        return dict(prompt=prompt, question=prompt, segment_ids=kwargs.get("segment_ids"),
                    mode=kwargs.get("mode", self.mode), max_new_tokens=kwargs.get("max_tokens", self.max_tokens),
                    temperature=kwargs.get("temperature", self.temperature), stop=stop,
                    timeout=kwargs.get("timeout", self.timeout),
                    prompt_format=kwargs.get("prompt_format", self.prompt_format),
                    top_p=kwargs.get("top_p", self.top_p), seed=kwargs.get("seed", self.seed))

    def _info(self, result) -> dict:
        return {**result.to_dict(), "usage_metadata": usage_metadata(result),
                "model_name": self.checkpoint_name() or "hypic-rag"}

    def _stream(self, prompt: str, stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[GenerationChunk]:
        for text, result in run_generation(self.engine(), **self._request(prompt, stop, kwargs)):
            if result is None:
                chunk = GenerationChunk(text=text)
                if run_manager:
                    run_manager.on_llm_new_token(text, chunk=chunk)
                yield chunk
            else:
                yield GenerationChunk(text="", generation_info=self._info(result))

    async def _astream(self, prompt: str, stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[GenerationChunk]:
        async for text, result in arun_generation(self.engine(), **self._request(prompt, stop, kwargs)):
            if result is None:
                chunk = GenerationChunk(text=text)
                if run_manager:
                    await run_manager.on_llm_new_token(text, chunk=chunk)
                yield chunk
            else:
                yield GenerationChunk(text="", generation_info=self._info(result))

    def _call(self, prompt: str, stop: list[str] | None = None,
              run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> str:
        return "".join(c.text for c in self._stream(prompt, stop=stop, run_manager=run_manager, **kwargs))

    async def _acall(self, prompt: str, stop: list[str] | None = None,
                     run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> str:
        return "".join([c.text async for c in self._astream(prompt, stop=stop, run_manager=run_manager, **kwargs)])

    def _generate(self, prompts: list[str], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> LLMResult:
        """Each prompt's text with the last chunk's generation_info (cache figures, usage, model_name)."""
        out = []
        for prompt in prompts:
            chunks = list(self._stream(prompt, stop=stop, run_manager=run_manager, **kwargs))
            out.append([Generation(text="".join(c.text for c in chunks), generation_info=chunks[-1].generation_info)])
        return LLMResult(generations=out)

    async def _agenerate(self, prompts: list[str], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> LLMResult:
        out = []
        for prompt in prompts:
            chunks = [c async for c in self._astream(prompt, stop=stop, run_manager=run_manager, **kwargs)]
            out.append([Generation(text="".join(c.text for c in chunks), generation_info=chunks[-1].generation_info)])
        return LLMResult(generations=out)
