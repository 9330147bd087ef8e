"""HypicRAGLLM: a plain-text LangChain LLM over hypic_rag (prompt text in, completion out)."""

from __future__ import annotations

from typing import Any, AsyncIterator, Iterator

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LLM
from langchain_core.outputs import GenerationChunk

from langchain_hypic_rag._engine import HypicEngineMixin, arun_generation, run_generation


class HypicRAGLLM(HypicEngineMixin, LLM):
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
                    timeout=kwargs.get("timeout", self.timeout))

    def _stream(self, prompt: str, stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[GenerationChunk]:
        for text, result in run_generation(self.engine(), **self._request(prompt, stop, kwargs)):
            if result is None:
                chunk = GenerationChunk(text=text)
                if run_manager:
                    run_manager.on_llm_new_token(text, chunk=chunk)
                yield chunk
            else:
                yield GenerationChunk(text="", generation_info=result.to_dict())

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
                yield GenerationChunk(text="", generation_info=result.to_dict())

    def _call(self, prompt: str, stop: list[str] | None = None,
              run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> str:
        return "".join(c.text for c in self._stream(prompt, stop=stop, run_manager=run_manager, **kwargs))

    async def _acall(self, prompt: str, stop: list[str] | None = None,
                     run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> str:
        return "".join([c.text async for c in self._astream(prompt, stop=stop, run_manager=run_manager, **kwargs)])
