"""The one LLM factory both loops use: settings from flags or environment, one OpenAI-compatible client path.

With no endpoint configured the embedded SmolLM2-135M server is started (`nodes.local_server`) and the same
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

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from nodes.local_server import MODEL_ALIAS, LocalModelServer
from nodes.scripted_model import ScriptedChatModel

SCRIPTED = "scripted"
EMBEDDED_MAX_TOKENS = 1024  # the embedded model decodes ~67 tokens/s on 2 cores: cap a rambling answer at ~15 s
DEFAULT_TIMEOUT_S = 180.0
CLIENT_MAX_RETRIES = 1  # `ask_structured` re-asks and records each attempt; the client itself retries once

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
            llm = _client(settings, server.base_url, "local", max_tokens, [ServerWatchdog(server)])
            yield llm, _embedded_description(server)
    else:
        llm = _client(settings, settings.base_url, settings.api_key or "none", settings.max_tokens, [])
        yield llm, f"{settings.model} at {settings.base_url}"


class ServerWatchdog(BaseCallbackHandler):
    """Before every chat call, restart the embedded server if it died; a failed restart propagates."""

    raise_error = True

    def __init__(self, server: LocalModelServer) -> None:
        self.server = server

    def on_chat_model_start(
        self, serialized: dict[str, Any], messages: list[list[BaseMessage]], *, run_id: UUID, **kwargs: Any
    ) -> None:
        self.server.ensure_alive()


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
