"""The one LLM factory both loops use: settings from flags or environment, one OpenAI-compatible client path.

With no endpoint configured the embedded SmolLM2-135M server is started (`llm.local_server`) and the same
`ChatOpenAI` client talks to it; DeepSeek, vLLM, Ollama or OpenAI itself are just a base URL and a model name.
`model="scripted"` yields a `ScriptedChatModel` replaying a given script (tests and demos).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from uuid import UUID

import openai
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from llm.local_server import MODEL_ALIAS, LocalModelServer
from llm.scripted import ScriptedChatModel

SCRIPTED = "scripted"
EMBEDDED_MAX_TOKENS = 1024  # the embedded model decodes ~67 tokens/s on 2 cores: cap a rambling answer at ~15 s
DEFAULT_TIMEOUT_S = 180.0
# The client never retries on its own: `ask_structured` re-asks, and records and charges every request it makes.
CLIENT_MAX_RETRIES = 0
# The embedded model's call time limit follows from its measured speed (`CallTimer`): the expected time of the
# prompt and of a full answer, times the slowdown seen on recent calls, times a safety factor.
TIME_SAFETY = 3.0
MIN_CALL_TIMEOUT_S = 10.0
CHARS_PER_TOKEN = 3.0  # characters per prompt token, on the low side (SmolLM2's tokenizer: ~4 on English text)

BASE_URL_ENV = ("BILEVEL_LLM_BASE_URL", "OPENAI_BASE_URL")
MODEL_ENV = ("BILEVEL_LLM_MODEL", "OPENAI_MODEL")
API_KEY_ENV = ("BILEVEL_LLM_API_KEY", "OPENAI_API_KEY")


@dataclass(frozen=True)
class LLMSettings:
    """How to reach the chat model. `base_url=None` means the embedded server; `model="scripted"` the script."""

    model: str = MODEL_ALIAS
    base_url: str | None = None
    api_key: str | None = None
    temperature: float = 0.7
    max_tokens: int | None = None  # None: EMBEDDED_MAX_TOKENS for the embedded model, the provider's default remotely
    timeout: float | None = DEFAULT_TIMEOUT_S
    seed: int | None = None

    @property
    def embedded(self) -> bool:
        return self.base_url is None and self.model != SCRIPTED

    @classmethod
    def resolve(
        cls,
        *,
        model: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        timeout: float | None = None,
        seed: int | None = None,
        env: Mapping[str, str] | None = None,
    ) -> LLMSettings:
        """Flags first, then the environment (`BILEVEL_LLM_*`, then `OPENAI_*`), then the defaults."""
        env = os.environ if env is None else env
        resolved_url = base_url or _first(env, BASE_URL_ENV)
        resolved_model = model or _first(env, MODEL_ENV)
        if resolved_url and not resolved_model:
            raise ValueError(
                f"the endpoint {resolved_url} needs a model name: pass --llm-model or set BILEVEL_LLM_MODEL"
            )
        if not resolved_url and resolved_model not in (None, MODEL_ALIAS, SCRIPTED):
            raise ValueError(
                f"model {resolved_model!r} needs an endpoint: pass --llm-base-url or set BILEVEL_LLM_BASE_URL "
                f"(without one the embedded {MODEL_ALIAS!r} is used)"
            )
        defaults = cls()
        return cls(
            model=resolved_model or MODEL_ALIAS,
            base_url=resolved_url or None,
            api_key=api_key or _first(env, API_KEY_ENV),
            temperature=defaults.temperature if temperature is None else temperature,
            max_tokens=max_tokens,
            timeout=defaults.timeout if timeout is None else timeout,
            seed=seed,
        )

    def public(self) -> dict[str, Any]:
        """The settings without the API key, for the run's records."""
        return {
            "model": self.model,
            "base_url": self.base_url,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "timeout": self.timeout,
            "seed": self.seed,
        }


@contextmanager
def open_chat_model(
    settings: LLMSettings, *, script: Sequence[Any] | None = None, server_log: Path | None = None
) -> Iterator[tuple[BaseChatModel, str]]:
    """Yield `(chat_model, description)`; an embedded server started here is stopped on exit."""
    if settings.model == SCRIPTED:
        if script is None:
            raise ValueError("model 'scripted' needs a script of answers")
        yield ScriptedChatModel(script=list(script)), f"scripted model ({len(script)} answers)"
    elif settings.base_url is None:
        with LocalModelServer(log_path=server_log) as server:
            max_tokens = settings.max_tokens or EMBEDDED_MAX_TOKENS
            llm = _client(settings, server.base_url, "local", max_tokens, [embedded_watchdog(server, max_tokens)])
            yield llm, _embedded_description(server)
    else:
        llm = _client(settings, settings.base_url, settings.api_key or "none", settings.max_tokens, [])
        yield llm, f"{settings.model} at {settings.base_url}"


@dataclass
class CallTimer:
    """How long a call to the embedded model may take: prompt tokens at the measured prompt speed plus a full answer
    at the measured decode speed, times the slowdown observed on recent calls (a busy machine), times
    `TIME_SAFETY`."""

    prompt_tps: float
    decode_tps: float
    max_tokens: int = EMBEDDED_MAX_TOKENS
    slowdown: float = 1.0

    def expected_s(self, prompt_tokens: float, answer_tokens: float) -> float:
        return 0.2 + prompt_tokens / self.prompt_tps + answer_tokens / self.decode_tps

    def limit_s(self, prompt_tokens: float) -> float:
        return max(MIN_CALL_TIMEOUT_S, TIME_SAFETY * self.slowdown * self.expected_s(prompt_tokens, self.max_tokens))

    def observe(self, prompt_tokens: int, completion_tokens: int, seconds: float) -> None:
        """Learn the machine's current slowdown from a call that answered (a cached prompt prefix only makes a
        call faster than expected, which lowers the estimate slowly)."""
        if prompt_tokens <= 0 or seconds <= 0:
            return
        ratio = seconds / self.expected_s(prompt_tokens, completion_tokens)
        self.slowdown = max(1.0, 0.5 * self.slowdown + 0.5 * ratio)


def prompt_tokens_estimate(messages: Sequence[Any]) -> float:
    """An upper estimate of a conversation's prompt tokens from its characters (the chat template adds a few)."""
    chars = sum(len(str(getattr(m, "content", m))) for m in messages)
    return chars / CHARS_PER_TOKEN + 16 * len(messages)


class ServerWatchdog(BaseCallbackHandler):
    """The embedded server's guard: before every chat call, restart the server if it died (a failed restart
    propagates); bound every call by a time limit from the measured speed (`call_limits`); and after a call the
    client abandoned (a timeout), restart the server, so the abandoned prompt does not keep it busy and the
    next call does not queue behind work nobody waits for."""

    raise_error = True

    def __init__(self, server: LocalModelServer, timer: CallTimer | None = None) -> None:
        self.server = server
        self.timer = timer
        self.abandoned = 0

    def on_chat_model_start(
        self, serialized: dict[str, Any], messages: list[list[BaseMessage]], *, run_id: UUID, **kwargs: Any
    ) -> None:
        self.server.ensure_alive()

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        if isinstance(error, openai.APITimeoutError):
            self.abandoned += 1
            self.server.restart()

    def call_limits(self, llm: BaseChatModel, messages: Sequence[Any]) -> BaseChatModel:
        """`llm` with this call's time limit (an OpenAI client request option), when a timer is set."""
        if self.timer is None or not isinstance(llm, ChatOpenAI):
            return llm
        limit = round(self.timer.limit_s(prompt_tokens_estimate(messages)), 1)
        return llm.model_copy(update={"model_kwargs": {**llm.model_kwargs, "timeout": limit}})

    def observe_call(self, prompt_tokens: int, completion_tokens: int, seconds: float, ok: bool) -> None:
        if self.timer is not None and ok:
            self.timer.observe(prompt_tokens, completion_tokens, seconds)


def embedded_watchdog(server: LocalModelServer, max_tokens: int = EMBEDDED_MAX_TOKENS) -> ServerWatchdog:
    """The watchdog of a started embedded server, its call timer calibrated by measuring the server's speed."""
    prompt_tps, decode_tps = server.measure_speed()
    return ServerWatchdog(server, CallTimer(prompt_tps, decode_tps, max_tokens))


def _client(
    settings: LLMSettings, base_url: str, api_key: str, max_tokens: int | None, callbacks: list[BaseCallbackHandler]
) -> ChatOpenAI:
    return ChatOpenAI(
        model=settings.model,
        base_url=base_url,
        api_key=SecretStr(api_key),
        temperature=settings.temperature,
        # langchain-openai sends its max_tokens as `max_completion_tokens`, which llama.cpp's server (and other
        # OpenAI-compatible servers) ignore; `max_tokens` in the body is what all of them read.
        extra_body=None if max_tokens is None else {"max_tokens": max_tokens},
        timeout=settings.timeout,
        seed=settings.seed,
        max_retries=CLIENT_MAX_RETRIES,
        callbacks=callbacks or None,
    )


def _embedded_description(server: LocalModelServer) -> str:
    try:
        runtime = f"llama-cpp-python {version('llama-cpp-python')}"
    except PackageNotFoundError:
        runtime = "llama-cpp-python"
    return f"embedded {MODEL_ALIAS} ({server.model_path.name}, {runtime}, n_ctx {server.n_ctx}) at {server.base_url}"


def _first(env: Mapping[str, str], names: Sequence[str]) -> str | None:
    return next((env[name] for name in names if env.get(name)), None)
