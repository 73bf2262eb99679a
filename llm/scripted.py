"""A scripted chat model for tests and demos: replays answers in order, including tool calls for structured output.

Script items:
- a dict: the arguments of a call to the tool the caller bound (so `with_structured_output(Schema,
  method="function_calling")` parses it as `Schema`); with no tool bound, the dict is answered as JSON text;
- a str: a plain text answer with no tool call (what a weak model does when it ignores the tool);
- an `AIMessage`: answered as is (e.g. a call to a tool with another name);
- an exception (instance or class): raised, as an endpoint failure would be;
- a callable `(messages) -> item`: evaluated at call time, for answers that depend on the conversation.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field, PrivateAttr

from llm.structured import LLMFatalError


class ScriptExhausted(LLMFatalError):
    """The script has no answer left for a call (and `cycle` is off): the test asked more often than it planned."""


class ScriptedChatModel(FakeMessagesListChatModel):
    """Replays `script` (alias of `responses`) one item per call; records every conversation it was sent."""

    model_config = ConfigDict(populate_by_name=True)

    responses: list[Any] = Field(alias="script")
    cycle: bool = False
    usage: UsageMetadata | None = None
    """Token counts attached to every answer that does not carry its own (so budget accounting is testable)."""
    model_name: str = "scripted"
    description: str | None = None
    """How a run's `run_start` event names this model (default: the class name)."""
    calls: list[list[BaseMessage]] = Field(default_factory=list)
    """The messages of every call, in order."""
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @property
    def _llm_type(self) -> str:
        return "scripted-chat-model"

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | Any],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind the tools' names: a dict item becomes a call to the first bound tool."""
        names = [convert_to_openai_tool(tool)["function"]["name"] for tool in tools]
        return self.bind(tool_names=names, **kwargs)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        item = self._next_item(messages)
        if self.sleep:
            time.sleep(self.sleep)
        if isinstance(item, type) and issubclass(item, BaseException):
            raise item(f"scripted {item.__name__} at call {len(self.calls)}")
        if callable(item) and not isinstance(item, BaseException):
            item = item(messages)
        if isinstance(item, BaseException):
            raise item
        message = self._to_message(item, kwargs.get("tool_names") or [])
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _next_item(self, messages: list[BaseMessage]) -> Any:
        with self._lock:
            self.calls.append(list(messages))
            if self.i >= len(self.responses):
                if not self.cycle or not self.responses:
                    raise ScriptExhausted(
                        f"ScriptedChatModel: call {len(self.calls)} but the script has only {len(self.responses)} "
                        "answers (add answers or pass cycle=True)"
                    )
                self.i = 0
            item = self.responses[self.i]
            self.i += 1
            return item

    def _to_message(self, item: Any, tool_names: list[str]) -> AIMessage:
        if isinstance(item, AIMessage):
            message = item.model_copy()
        elif isinstance(item, str):
            message = AIMessage(content=item)
        elif isinstance(item, dict) and tool_names:
            call = {"name": tool_names[0], "args": item, "id": f"call_{uuid.uuid4().hex[:12]}", "type": "tool_call"}
            message = AIMessage(content="", tool_calls=[call])
        elif isinstance(item, dict):
            message = AIMessage(content=json.dumps(item))
        else:
            raise TypeError(f"ScriptedChatModel: unsupported script item {item!r}")
        if message.usage_metadata is None and self.usage is not None:
            message.usage_metadata = self.usage
        message.response_metadata = {"model_name": self.model_name, **message.response_metadata}
        return message
