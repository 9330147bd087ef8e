"""ChatHypicRAG: a BaseChatModel that reuses hypic_rag segment caches.

Cached segments are reused when their ids are passed (`model.invoke(msgs, segment_ids=[...])` or
`.bind(segment_ids=...)`), and when a chain stuffs retrieved documents into the prompt as text:
stored segments found in the prompt are composed from the cache, the rest is prefilled.
"""

from __future__ import annotations

from typing import Any, Iterator

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.language_models.chat_models import generate_from_stream
from langchain_core.messages import AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from pydantic import Field

from langchain_hypic_rag._engine import HypicEngineMixin, run_generation


def _text(message: BaseMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") if isinstance(b, dict) else str(b) for b in content)


class ChatHypicRAG(HypicEngineMixin, BaseChatModel):
    model_name: str = Field(default="hypic-rag", alias="model")
    mode: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    stop: list[str] | None = None
    timeout: float | None = None
    max_retries: int = 0
    streaming: bool = False

    @property
    def _llm_type(self) -> str:
        return "hypic-rag-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "mode": self.mode, "store_dir": self.store_dir}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="hypic_rag", ls_model_name=kwargs.get("model", self.model_name), ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
        )
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        if max_tokens is not None:
            params["ls_max_tokens"] = max_tokens
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        if not messages:
            raise ValueError("ChatHypicRAG needs at least one message")
        humans = [m for m in messages if isinstance(m, HumanMessage)]
        pieces = run_generation(
            self.engine(),
            prompt="\n".join(_text(m) for m in messages),
            question=_text(humans[-1] if humans else messages[-1]),
            segment_ids=kwargs.get("segment_ids"),
            mode=kwargs.get("mode", self.mode),
            max_new_tokens=kwargs.get("max_tokens", self.max_tokens),
            temperature=kwargs.get("temperature", self.temperature),
            stop=stop or self.stop,
        )
        for text, result in pieces:
            if result is None:
                yield ChatGenerationChunk(message=AIMessageChunk(content=text))
                continue
            gen = result.generation
            usage = UsageMetadata(input_tokens=gen.prompt_tokens, output_tokens=len(gen.token_ids),
                                  total_tokens=gen.prompt_tokens + len(gen.token_ids),
                                  input_token_details={"cache_read": gen.cached_tokens})
            yield ChatGenerationChunk(
                message=AIMessageChunk(content="", usage_metadata=usage,
                                       response_metadata={"model_name": self.model_name, **result.to_dict()},
                                       chunk_position="last"),
            )

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        return generate_from_stream(self._stream(messages, stop=stop, run_manager=run_manager, **kwargs))
