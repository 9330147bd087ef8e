"""ChatHypicRAG: a BaseChatModel that reuses hypic_rag segment caches.

Cached segments are reused when their ids are passed (`model.invoke(msgs, segment_ids=[...])` or
`.bind(segment_ids=...)`), and when a chain stuffs retrieved documents into the prompt as text:
stored segments found in the prompt are composed from the cache, the rest is prefilled.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Iterator

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.language_models.chat_models import agenerate_from_stream, generate_from_stream
from langchain_core.messages import AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from pydantic import Field

from langchain_hypic_rag._engine import HypicEngineMixin, arun_generation, run_generation, usage_metadata


def _text(message: BaseMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") if isinstance(b, dict) else str(b) for b in content)


_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool", "function": "tool"}


class ChatHypicRAG(HypicEngineMixin, BaseChatModel):
    """A LangChain chat model answering from a hypic_rag store (`rag=HypicRAG(...)` or `store_dir=`).

    Messages are rendered with the tokenizer's chat template when it has one (roles kept), otherwise
    joined by newlines; stored segments found in the rendered prompt come from the cache. Per call:
    segment_ids, mode, max_tokens, temperature, top_p, seed, stop, timeout, prompt_format. model_name defaults to
    the checkpoint's. prompt_format "store" (the default) sends the model the documents found in the
    prompt and the prompt's question ("Question:" / "Query:" line) in the store's own template, which
    the store's model was trained on; "as_is" sends the rendered prompt verbatim."""

    model_name: str | None = Field(default=None, alias="model")
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
        return {"model_name": self._model_name(), "mode": self.mode, "store_dir": self.store_dir}

    def _model_name(self) -> str:
        return self.model_name or self.checkpoint_name() or "hypic-rag"

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="hypic_rag", ls_model_name=kwargs.get("model", self._model_name()), ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
        )
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        if max_tokens is not None:
            params["ls_max_tokens"] = max_tokens
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    def _request(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict) -> dict:
        if not messages:
            raise ValueError("ChatHypicRAG needs at least one message")
        humans = [m for m in messages if isinstance(m, HumanMessage)]
        return dict(prompt=self._render(messages),
                    question=_text(humans[-1] if humans else messages[-1]),
                    segment_ids=kwargs.get("segment_ids"), mode=kwargs.get("mode", self.mode),
                    max_new_tokens=kwargs.get("max_tokens", self.max_tokens),
                    temperature=kwargs.get("temperature", self.temperature), stop=stop or self.stop,
                    timeout=kwargs.get("timeout", self.timeout),
                    prompt_format=kwargs.get("prompt_format", self.prompt_format),
                    top_p=kwargs.get("top_p", self.top_p), seed=kwargs.get("seed", self.seed))

    def _render(self, messages: list[BaseMessage]) -> str:
        """The prompt text: the chat template's rendering (with the generation prompt) where the
        tokenizer has a template, else the messages' texts joined by newlines."""
        tokenizer = self.engine().tokenizer
        if getattr(tokenizer, "chat_template", None):
            turns = [{"role": _ROLES.get(m.type, m.type), "content": _text(m)} for m in messages]
            return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        return "\n".join(_text(m) for m in messages)

    def _chunk(self, text: str | None, result) -> ChatGenerationChunk:
        if result is None:
            return ChatGenerationChunk(message=AIMessageChunk(content=text))
        return ChatGenerationChunk(
            message=AIMessageChunk(content="", usage_metadata=UsageMetadata(**usage_metadata(result)),
                                   response_metadata={"model_name": self._model_name(), **result.to_dict()},
                                   chunk_position="last"),
        )

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        for text, result in run_generation(self.engine(), **self._request(messages, stop, kwargs)):
            yield self._chunk(text, result)  # BaseChatModel reports each chunk to the callbacks

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        async for text, result in arun_generation(self.engine(), **self._request(messages, stop, kwargs)):
            yield self._chunk(text, result)

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        return generate_from_stream(self._stream(messages, stop=stop, run_manager=run_manager, **kwargs))

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        return await agenerate_from_stream(self._astream(messages, stop=stop, run_manager=run_manager, **kwargs))
