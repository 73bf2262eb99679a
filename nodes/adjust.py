"""The `adjust` node (Level 1.5): the LLM sets the inner loop's strategy, frozen parameters and guidance — never
values — from per-parameter statistics; caps keep enough parameters active. The embedded model answers with enums
only (a strategy, one parameter to freeze, one to unfreeze; no free-text guidance), so every answer is admissible."""

from __future__ import annotations

import json
from typing import Any, Literal

from langgraph.runtime import Runtime
from pydantic import BaseModel, Field, create_model

from llm.structured import LLMBudgetExhausted
from nodes.context import OuterContext
from nodes.prompts import ADJUST_SYSTEM, ADJUST_USER, COMPACT_ADJUST_SYSTEM, COMPACT_ADJUST_USER
from nodes.segment_stats import parameter_stats
from nodes.state import OuterState


def adjustment_schema(names: tuple[str, ...]) -> type[BaseModel]:
    name: Any = Literal[names]
    fields: dict[str, Any] = {
        "strategy": (Literal["explore", "exploit", "focused"], Field(description="how the next segment searches")),
        "freeze": (list[name], Field(default_factory=list, max_length=10, description="parameters to stop changing")),
        "unfreeze": (list[name], Field(default_factory=list, max_length=10, description="parameters to free again")),
        "guidance": (str, Field(default="", description="one or two sentences for the proposer")),
    }
    return create_model("Adjustment", **fields)


def compact_schema(free: tuple[str, ...], frozen: list[str]) -> type[BaseModel]:
    """The embedded model's answer: a strategy, at most one parameter to freeze and one to unfreeze, every field an
    enum (so every answer is an admissible adjustment; the caps still apply)."""
    fields: dict[str, Any] = {
        "strategy": (Literal["explore", "exploit", "focused"], Field(description="how the next segment searches")),
        "freeze": (Literal[("none", *(n for n in free if n not in frozen))], Field(description="stop changing")),
        "unfreeze": (Literal[("none", *frozen)], Field(description="change again")),
    }
    return create_model("Adjustment", **fields)


def compact_stats(stats: dict[str, dict[str, Any]]) -> str:
    lines = []
    for name, s in stats.items():
        effect = "n/a" if s["mean_effect"] is None else f"{s['mean_effect']:+.4f}"
        lines.append(f"{name}: tried {s['tried']}, kept {s['kept']}, crashed {s['crashed']}, mean change {effect}")
    return "\n".join(lines) or "(nothing changed yet)"


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
    stats = parameter_stats(inner.get("experiments", []))
    frozen_now = list(settings.get("frozen", []))
    figures = {
        "frozen": ", ".join(frozen_now) or "none",
        "strategy": settings.get("strategy", "explore"),
        "best": inner.get("best_bpb"),
        "n": len(inner.get("experiments", [])),
        "progress": segments[-1]["progress"] if segments else "n/a",
    }
    compact = ctx.inner.compact
    if compact:
        schema, system = compact_schema(free, frozen_now), COMPACT_ADJUST_SYSTEM
        never = [n for n in free if n not in stats]
        prompt = COMPACT_ADJUST_USER.format(stats=compact_stats(stats), never=", ".join(never) or "none", **figures)
    else:
        schema, system = adjustment_schema(free), ADJUST_SYSTEM
        prompt = ADJUST_USER.format(stats=json.dumps(stats, indent=1), **figures)
    try:
        answer = ctx.inner.ask(
            schema, system, prompt, node="adjust", level="L1.5", by_construction=compact, cycle=state.get("cycle", 0)
        )
    except LLMBudgetExhausted as e:
        return {"stop_reason": str(e)}
    if answer.value is None:
        ctx.inner.ledger.event(
            "adjust",
            event_id=f"cycle-{state.get('cycle', 0):03d}:adjust",  # a replay after a kill writes it once
            cycle=state.get("cycle", 0),
            applied=False,
            errors=answer.errors,
            note="no valid adjustment: settings unchanged (recorded fallback)",
        )
        return {}
    value: Any = answer.value
    freeze, unfreeze = (
        ([value.freeze] if value.freeze != "none" else [], [value.unfreeze] if value.unfreeze != "none" else [])
        if compact
        else (list(value.freeze), list(value.unfreeze))
    )
    frozen, notes = apply_caps(frozen_now, freeze, unfreeze, free, ctx.max_new_freezes, ctx.min_active)
    new_settings = {"strategy": value.strategy, "frozen": frozen, "guidance": "" if compact else value.guidance}
    ctx.inner.ledger.event(
        "adjust",
        event_id=f"cycle-{state.get('cycle', 0):03d}:adjust",
        cycle=state.get("cycle", 0),
        applied=True,
        before=settings,
        after=new_settings,
        cap_notes=notes,
    )
    return {"inner": {**inner, "settings": new_settings}}
