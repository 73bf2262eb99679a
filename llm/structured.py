"""Validated structured calls to the chat model: count, record, re-ask, and fall back in a recorded way.

Every node that asks the LLM goes through `ask_structured`. It binds the Pydantic schema as a tool
(`method="function_calling"`, the only structured method the embedded llama.cpp server accepts), records each
attempt (tokens, latency, error), re-asks with the error appended to the conversation when the answer does not
parse, fails the caller's `check`, or the endpoint fails, and after `max_attempts` hands back `fallback=True` so the
caller applies its own recorded fallback. `LLMBudget` caps calls and tokens per run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import openai
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from pydantic import BaseModel, ValidationError

MAX_FIELD_CHARS = 20_000  # a string field longer than this is treated as a malformed answer
MAX_ECHO_CHARS = 1_000  # how much of a rejected answer is quoted back to the model
MAX_ERROR_CHARS = 2_000  # how much of one error message is kept

T = TypeVar("T", bound=BaseModel)
Record = Callable[[dict[str, Any]], None]


class LLMFatalError(RuntimeError):
    """An error that re-asking cannot fix: `ask_structured` lets it propagate instead of retrying."""


class LLMBudgetExhausted(LLMFatalError):
    """The run's LLM budget (calls or tokens) does not allow another call."""


# Endpoint errors that only a configuration change fixes (bad key, unknown model): retrying would only hide them.
_CONFIGURATION_ERRORS = (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError)


@dataclass
class LLMBudget:
    """Caps on LLM use for one run; None means unlimited. A plain dataclass, so it can be saved with the run."""

    max_calls: int | None = None
    max_tokens: int | None = None
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def exhausted(self) -> bool:
        return self._exhaustion() is not None

    def _exhaustion(self) -> str | None:
        if self.max_calls is not None and self.calls >= self.max_calls:
            return f"{self.calls} of {self.max_calls} calls used"
        if self.max_tokens is not None and self.tokens >= self.max_tokens:
            return f"{self.tokens} of {self.max_tokens} tokens used"
        return None

    def reserve_call(self, *, node: str, level: str) -> None:
        """Count one call, or raise `LLMBudgetExhausted` if the budget does not allow it."""
        reason = self._exhaustion()
        if reason is not None:
            raise LLMBudgetExhausted(f"LLM budget exhausted before a call from node {node!r} (level {level}): {reason}")
        self.calls += 1

    def charge(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens

    def summary(self) -> dict[str, int | None]:
        return {
            "max_calls": self.max_calls,
            "max_tokens": self.max_tokens,
            "calls": self.calls,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }


@dataclass
class StructuredAnswer(Generic[T]):
    """The outcome of `ask_structured`: a validated value, or `fallback=True` with every attempt's error."""

    value: T | None
    attempts: int
    errors: list[str] = field(default_factory=list)
    fallback: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        """A JSON-serialisable account of the call, for state and the trace."""
        return {
            "value": None if self.value is None else self.value.model_dump(mode="json"),
            "attempts": self.attempts,
            "errors": list(self.errors),
            "fallback": self.fallback,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "latency_s": round(self.latency_s, 3),
        }


@dataclass
class _Attempt:
    value: BaseModel | None
    error: str | None
    raw: AIMessage | None
    latency_s: float
    endpoint_failed: bool = False


def ask_structured(
    llm: BaseChatModel,
    schema: type[T],
    messages: list[Any],
    *,
    node: str,
    level: str,
    budget: LLMBudget,
    record: Record,
    check: Callable[[T], str | None] | None = None,
    max_attempts: int = 3,
    max_answers: int | None = None,
) -> StructuredAnswer[T]:
    """Ask `llm` for an instance of `schema`; re-ask on any failure; `fallback=True` after `max_attempts` failures.

    `check(value)` returns an error string to reject a parsed value (e.g. a no-op or out-of-range proposal).
    `max_answers` caps the model answers that may be rejected (1 for a schema whose every answer is valid: an
    invalid one then means an endpoint that ignores the grammar, and re-asking it rarely mends); endpoint failures
    count against `max_attempts` only. The client's own retries are off (`llm.client`): every request is an attempt
    here, recorded and charged. A callback of `llm` with `call_limits(llm, messages)` bounds each request (time
    limit, answer tokens) and `observe_call(prompt_tokens, completion_tokens, seconds, ok)` learns from it.
    Raises `LLMBudgetExhausted` when the budget does not allow the next attempt, and lets `LLMFatalError` and
    configuration errors of the endpoint (authentication, unknown model) propagate.
    """
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
    limiter = _callback_with(llm, "call_limits")
    conversation = list(messages)
    answer: StructuredAnswer[T] = StructuredAnswer(value=None, attempts=0)
    rejected = 0
    for number in range(1, max_attempts + 1):
        budget.reserve_call(node=node, level=level)
        client = limiter.call_limits(llm, conversation) if limiter is not None else llm
        structured = client.with_structured_output(schema, method="function_calling", include_raw=True)
        attempt = _attempt(structured, schema, conversation, check)
        usage = _usage(attempt.raw)
        budget.charge(*usage)
        _account(answer, attempt, usage)
        if limiter is not None and hasattr(limiter, "observe_call"):
            limiter.observe_call(*usage, attempt.latency_s, attempt.error is None)
        record(_event(llm, attempt, usage, node=node, level=level, number=number))
        if attempt.error is None:
            answer.value = attempt.value  # type: ignore[assignment]
            return answer
        answer.errors.append(attempt.error)
        if not attempt.endpoint_failed:  # after an endpoint failure the model saw nothing: re-ask as it was
            rejected += 1
            if max_answers is not None and rejected >= max_answers:
                break
            conversation.append(_rejection(schema, attempt))
    answer.fallback = True
    return answer


def _callback_with(llm: BaseChatModel, method: str) -> Any:
    """The first callback of `llm` that offers `method` (the embedded server's watchdog does), or None."""
    callbacks = getattr(llm, "callbacks", None)
    return next((cb for cb in callbacks or () if callable(getattr(cb, method, None))), None)


def _attempt(
    structured: Any, schema: type[T], conversation: list[Any], check: Callable[[T], str | None] | None
) -> _Attempt:
    started = time.perf_counter()
    try:
        result = structured.invoke(conversation)
    except (LLMFatalError, *_CONFIGURATION_ERRORS):
        raise
    except Exception as exc:  # any other endpoint failure (timeout, HTTP 5xx, connection refused) is re-asked
        failure = _truncate(f"endpoint error: {type(exc).__name__}: {exc}")
        return _Attempt(None, failure, None, _since(started), endpoint_failed=True)
    raw = result["raw"] if isinstance(result.get("raw"), AIMessage) else None
    parsed = result.get("parsed")
    error = _parse_error(schema, result) or _oversized(parsed) or (check(parsed) if check else None)
    if error is not None:
        return _Attempt(None, _truncate(error), raw, _since(started))
    return _Attempt(parsed, None, raw, _since(started))


def _parse_error(schema: type[BaseModel], result: dict[str, Any]) -> str | None:
    error = result.get("parsing_error")
    if isinstance(error, ValidationError):
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in error.errors())
        return f"the arguments of your `{schema.__name__}` call did not validate: {problems}"
    if error is not None:
        reason = str(error).split("\nFor troubleshooting")[0].strip()  # drop LangChain's link to its docs
        return f"your `{schema.__name__}` call could not be read: {reason}"
    if result.get("parsed") is None:
        return f"you did not call the tool `{schema.__name__}`; answer only by calling it with valid arguments"
    return None


def _oversized(value: BaseModel) -> str | None:
    for path, text in _strings(value.model_dump(mode="json"), "answer"):
        if len(text) > MAX_FIELD_CHARS:
            return f"malformed answer: field {path} has {len(text)} characters (limit {MAX_FIELD_CHARS})"
    return None


def _strings(node: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, str):
        yield path, node
    elif isinstance(node, dict):
        for key, item in node.items():
            yield from _strings(item, f"{path}.{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _strings(item, f"{path}[{index}]")


def _rejection(schema: type[BaseModel], attempt: _Attempt) -> HumanMessage:
    previous = _echo(attempt.raw)
    quoted = f"\nYour previous answer was: {previous}" if previous else ""
    return HumanMessage(
        f"Your previous answer was rejected: {attempt.error}{quoted}\n"
        f"Answer again by calling the tool `{schema.__name__}` with arguments that satisfy its schema."
    )


def _echo(raw: AIMessage | None) -> str:
    if raw is None:
        return ""
    try:
        text = json.dumps(raw.tool_calls[0]["args"]) if raw.tool_calls else str(raw.content)
    except (RecursionError, TypeError, ValueError):  # arguments nested too deeply to quote: say so, never raise
        text = "(arguments nested too deeply to quote)"
    return text if len(text) <= MAX_ECHO_CHARS else text[:MAX_ECHO_CHARS] + " ...(truncated)"


def _usage(raw: AIMessage | None) -> tuple[int, int]:
    usage = raw.usage_metadata if raw is not None else None
    if not usage:
        return 0, 0
    return int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0))


def _account(answer: StructuredAnswer[Any], attempt: _Attempt, usage: tuple[int, int]) -> None:
    answer.attempts += 1
    answer.prompt_tokens += usage[0]
    answer.completion_tokens += usage[1]
    answer.latency_s += attempt.latency_s


def _event(
    llm: BaseChatModel, attempt: _Attempt, usage: tuple[int, int], *, node: str, level: str, number: int
) -> dict[str, Any]:
    return {
        "event": "llm_call",
        "node": node,
        "level": level,
        "model": model_name(llm, attempt.raw),
        "prompt_tokens": usage[0],
        "completion_tokens": usage[1],
        "latency_s": round(attempt.latency_s, 4),
        "attempt": number,
        "ok": attempt.error is None,
        "error": attempt.error,
    }


def model_name(llm: BaseChatModel, raw: BaseMessage | None = None) -> str:
    """The model that answered (from the response when it says), else the name the client was configured with."""
    reported = raw.response_metadata.get("model_name") if raw is not None else None
    configured = getattr(llm, "model_name", None) or getattr(llm, "model", None)
    return str(reported or configured or type(llm).__name__)


def _truncate(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + " ...(truncated)"


def _since(started: float) -> float:
    return time.perf_counter() - started
