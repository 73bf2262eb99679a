"""The `adjust` node (Level 1.5): the LLM sets the inner loop's strategy, frozen parameters and guidance — never
values — from per-parameter statistics; caps keep enough parameters active."""

from __future__ import annotations

import json
from typing import Any, Literal

from langgraph.runtime import Runtime
from pydantic import BaseModel, Field, create_model

from nodes.context import OuterContext
from nodes.prompts import ADJUST_SYSTEM, ADJUST_USER
from nodes.segment_stats import parameter_stats
from nodes.state import OuterState
from nodes.structured import LLMBudgetExhausted


def adjustment_schema(names: tuple[str, ...]) -> type[BaseModel]:
    name: Any = Literal[names]
    fields: dict[str, Any] = {
        "strategy": (Literal["explore", "exploit", "focused"], Field(description="how the next segment searches")),
        "freeze": (list[name], Field(default_factory=list, max_length=10, description="parameters to stop changing")),
        "unfreeze": (list[name], Field(default_factory=list, max_length=10, description="parameters to free again")),
        "guidance": (str, Field(default="", description="one or two sentences for the proposer")),
    }
    return create_model("Adjustment", **fields)


def apply_caps(
    current: list[str], freeze: list[str], unfreeze: list[str], free: tuple[str, ...], max_new: int, min_active: int
) -> tuple[list[str], list[str]]:
    """The frozen list after an adjustment, and the notes of what the caps refused."""
    notes: list[str] = []
    frozen = [n for n in current if n not in set(unfreeze)]
    new = [n for n in dict.fromkeys(freeze) if n not in frozen]
    if len(new) > max_new:
        notes.append(f"only the first {max_new} of {len(new)} new freezes applied")
        new = new[:max_new]
    for n in new:
        if len(free) - len(frozen) - 1 < min_active:
            notes.append(f"{n} not frozen: at least {min_active} parameters stay active")
            continue
        frozen.append(n)
    return frozen, notes


def adjust(state: OuterState, runtime: Runtime[OuterContext]) -> dict[str, Any]:
    ctx = runtime.context
    if not ctx.acts("adjust") or state.get("stop_reason"):
        return {}
    inner = state["inner"]
    settings: dict[str, Any] = dict(inner.get("settings", {}))
    free = ctx.inner.space.free_names()
    segments = state.get("segments", [])
    prompt = ADJUST_USER.format(
        stats=json.dumps(parameter_stats(inner.get("experiments", [])), indent=1),
        frozen=settings.get("frozen") or "none",
        strategy=settings.get("strategy", "explore"),
        best=inner.get("best_bpb"),
        n=len(inner.get("experiments", [])),
        progress=segments[-1]["progress"] if segments else "n/a",
    )
    try:
        answer = ctx.inner.ask(
            adjustment_schema(free), ADJUST_SYSTEM, prompt, node="adjust", level="L1.5", cycle=state.get("cycle", 0)
        )
    except LLMBudgetExhausted as e:
        return {"stop_reason": str(e)}
    if answer.value is None:
        ctx.inner.ledger.event(
            "adjust",
            cycle=state.get("cycle", 0),
            applied=False,
            errors=answer.errors,
            note="no valid adjustment: settings unchanged (recorded fallback)",
        )
        return {}
    value: Any = answer.value
    frozen, notes = apply_caps(
        list(settings.get("frozen", [])),
        list(value.freeze),
        list(value.unfreeze),
        free,
        ctx.max_new_freezes,
        ctx.min_active,
    )
    new_settings = {"strategy": value.strategy, "frozen": frozen, "guidance": value.guidance}
    ctx.inner.ledger.event(
        "adjust", cycle=state.get("cycle", 0), applied=True, before=settings, after=new_settings, cap_notes=notes
    )
    return {"inner": {**inner, "settings": new_settings}}
