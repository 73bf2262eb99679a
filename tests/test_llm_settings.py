"""LLMSettings resolution (flags, environment, defaults) and the factory's scripted and remote paths."""

from __future__ import annotations

import pytest
from langchain_openai import ChatOpenAI

from llm.client import LLMSettings, open_chat_model
from llm.scripted import ScriptedChatModel


def test_defaults_are_the_embedded_model() -> None:
    settings = LLMSettings.resolve(env={})
    assert settings == LLMSettings(model="smollm2", base_url=None, api_key=None, temperature=0.7, seed=None)
    assert settings.embedded


def test_bilevel_env_wins_over_openai_env() -> None:
    env = {
        "BILEVEL_LLM_BASE_URL": "https://api.deepseek.com/v1",
        "OPENAI_BASE_URL": "http://127.0.0.1:11434/v1",
        "BILEVEL_LLM_MODEL": "deepseek-chat",
        "OPENAI_MODEL": "llama3",
        "OPENAI_API_KEY": "sk-test",
    }
    settings = LLMSettings.resolve(env=env)
    assert (settings.base_url, settings.model, settings.api_key) == (
        "https://api.deepseek.com/v1",
        "deepseek-chat",
        "sk-test",
    )
    assert not settings.embedded


def test_openai_env_is_used_when_bilevel_env_is_empty() -> None:
    env = {"BILEVEL_LLM_BASE_URL": "", "OPENAI_BASE_URL": "http://localhost:8000/v1", "OPENAI_MODEL": "qwen"}
    settings = LLMSettings.resolve(env=env)
    assert (settings.base_url, settings.model) == ("http://localhost:8000/v1", "qwen")


def test_flags_win_over_env() -> None:
    env = {"OPENAI_BASE_URL": "http://a/v1", "OPENAI_MODEL": "a", "OPENAI_API_KEY": "k1"}
    settings = LLMSettings.resolve(
        model="b", base_url="http://b/v1", api_key="k2", temperature=0.0, max_tokens=64, timeout=5, seed=3, env=env
    )
    assert settings == LLMSettings("b", "http://b/v1", "k2", 0.0, 64, 5, 3)


def test_inconsistent_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="needs a model name"):
        LLMSettings.resolve(base_url="http://localhost:11434/v1", env={})
    with pytest.raises(ValueError, match="needs an endpoint"):
        LLMSettings.resolve(model="gpt-4o", env={})


def test_public_settings_hide_the_key() -> None:
    public = LLMSettings.resolve(model="m", base_url="http://x/v1", api_key="secret", env={}).public()
    assert "secret" not in str(public) and public["model"] == "m"


def test_scripted_factory_path() -> None:
    with open_chat_model(LLMSettings(model="scripted"), script=["a"]) as (llm, description):
        assert isinstance(llm, ScriptedChatModel) and llm.invoke("x").content == "a"
    assert description == "scripted model (1 answers)"
    with pytest.raises(ValueError, match="needs a script"), open_chat_model(LLMSettings(model="scripted")):
        pass


def test_remote_factory_path_builds_the_same_client() -> None:
    settings = LLMSettings.resolve(model="deepseek-chat", base_url="https://api.deepseek.com/v1", seed=7, env={})
    with open_chat_model(settings) as (llm, description):
        assert isinstance(llm, ChatOpenAI)
        assert (llm.model_name, llm.openai_api_base, llm.seed, llm.temperature) == (
            "deepseek-chat", "https://api.deepseek.com/v1", 7, 0.7
        )  # fmt: skip
        assert llm.openai_api_key is not None and llm.openai_api_key.get_secret_value() == "none"
    assert description == "deepseek-chat at https://api.deepseek.com/v1"
