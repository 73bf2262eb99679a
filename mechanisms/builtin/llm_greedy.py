"""The default proposer: ask the LLM once, with the Level 1.5 guidance from the settings."""

from typing import Any

NAME = "llm_greedy"
TARGET = "propose"


def propose(view: Any) -> dict[str, Any]:
    return view.ask_llm(view.settings.get("guidance", ""))
