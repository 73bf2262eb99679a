"""The `generate` node (Level 2): a new propose mechanism for the next segment.

Two modes, recorded as the candidate's origin: "generated" — the LLM writes a mechanism module against the contract,
with repair rounds fed by the validator's errors; "composed" — for a model too weak to write code (the embedded one),
the LLM picks a built-in mechanism family and its parameters through structured output.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from langgraph.runtime import Runtime
from pydantic import BaseModel, Field, create_model

from nodes.context import OuterContext
from nodes.mechanism_calls import mechanism_record
from nodes.mechanism_loader import builtin_catalogue, builtin_source, coerce_builtin_params, mechanism_source
from nodes.prompts import COMPOSE_SYSTEM, COMPOSE_USER, GENERATE_SYSTEM, GENERATE_USER
from nodes.state import OuterState
from nodes.structured import LLMBudgetExhausted


class Setting(BaseModel):
    name: str
    value: str


class GeneratedMechanism(BaseModel):
    name: str = Field(description="short identifier, e.g. tabu_ucb")
    source: str = Field(description="the whole Python module")
    rationale: str = Field(description="how it addresses the diagnosis")


def composition_schema(families: tuple[str, ...]) -> type[BaseModel]:
    fields: dict[str, Any] = {
        "family": (Literal[families], Field(description="the mechanism family")),
        "params": (list[Setting], Field(default_factory=list, max_length=8, description="parameters of the family")),
        "rationale": (str, Field(default="", description="why it fits the diagnosis")),
    }
    return create_model("Composition", **fields)


def _families(active: str) -> str:
    lines = []
    for name, entry in builtin_catalogue().items():
        if entry["target"] != "propose":
            continue
        params = ", ".join(f"{p}: {spec['default']!r} ({spec['doc']})" for p, spec in entry["params"].items())
        lines.append(f"- {name}: {entry['doc']} Parameters: {params or 'none'}")
    return "\n".join(lines) + f"\n(active: {active})"


def compose(state: OuterState, ctx: OuterContext) -> dict[str, Any]:
    diagnosis = state.get("diagnosis") or {}
    catalogue = {n: e for n, e in builtin_catalogue().items() if e["target"] == "propose"}
    families = tuple(catalogue)
    prompt = COMPOSE_USER.format(
        bottleneck=diagnosis.get("bottleneck"),
        evidence=diagnosis.get("evidence"),
        ideas="; ".join(diagnosis.get("ideas", [])),
        families=_families(state["active"]["id"]),
        active=state["active"]["name"],
    )
    chosen: dict[str, Any] = {}
    active_id = state["active"]["id"]

    def check(answer: BaseModel) -> str | None:
        value: Any = answer
        try:
            chosen["params"] = coerce_builtin_params(value.family, {s.name: s.value for s in value.params})
        except ValueError as e:
            return str(e)
        same = mechanism_record(value.family, "composed", builtin_source(value.family), chosen["params"])
        if same["id"] == active_id:
            return (
                f"{value.family} with these parameters is the mechanism already running ({active_id}): "
                "choose another family, or other parameters"
            )
        return None

    answer = ctx.inner.ask(
        composition_schema(families),
        COMPOSE_SYSTEM,
        prompt,
        node="generate",
        level="L2",
        check=check,
        cycle=state.get("cycle", 0),
    )
    if answer.value is None:
        # Recorded fallback: the family the diagnosis' own figures point to, with its default parameters.
        family = _family_for(diagnosis, families, state["active"]["name"])
        chosen["params"], rationale, source = {}, "fallback: the LLM gave no valid composition", "fallback"
    else:
        value: Any = answer.value
        family, rationale, source = value.family, value.rationale, "llm"
    record = mechanism_record(family, "composed", builtin_source(family), chosen["params"])
    ctx.inner.ledger.event(
        "generate",
        cycle=state.get("cycle", 0),
        mode="compose",
        candidate=record,
        rationale=rationale,
        source=source,
        errors=answer.errors,
    )
    return {"candidate": record, "candidate_source": builtin_source(family)}


def _family_for(diagnosis: dict[str, Any], families: tuple[str, ...], active: str) -> str:
    text = (diagnosis.get("bottleneck", "") + " " + " ".join(diagnosis.get("ideas", []))).lower()
    for word, family in (
        ("tabu", "tabu"),
        ("revisit", "tabu"),
        ("stagnat", "stagnation"),
        ("bandit", "bandit"),
        ("design", "doe"),
        ("explored", "doe"),
        ("anneal", "stagnation"),
    ):
        if word in text and family in families and family != active:
            return family
    return next(f for f in families if f != active)


def write_module(state: OuterState, ctx: OuterContext) -> dict[str, Any]:
    diagnosis = state.get("diagnosis") or {}
    validation = state.get("validation") or {}
    repair = ""
    if validation and not validation.get("ok") and state.get("candidate_source"):
        repair = (
            f"\nYour previous module was refused by the validator:\n{json.dumps(validation.get('errors'))}\n"
            f"The refused module:\n```python\n{state['candidate_source']}\n```\nFix it.\n"
        )
    prompt = GENERATE_USER.format(
        bottleneck=diagnosis.get("bottleneck"),
        evidence=diagnosis.get("evidence"),
        ideas="; ".join(diagnosis.get("ideas", [])),
        source=mechanism_source(state["active"], ctx.inner.ledger.root),
        repair=repair,
    )
    answer = ctx.inner.ask(
        GeneratedMechanism, GENERATE_SYSTEM, prompt, node="generate", level="L2", cycle=state.get("cycle", 0)
    )
    if answer.value is None:
        ctx.inner.ledger.event(
            "generate", cycle=state.get("cycle", 0), mode="generate", candidate=None, errors=answer.errors
        )
        return {"candidate": None, "candidate_source": None}
    value: GeneratedMechanism = answer.value
    source = _strip_fences(value.source)
    name = re.sub(r"[^a-z0-9_]", "_", value.name.lower())[:40] or "generated"
    record = mechanism_record(name, "generated", source)
    ctx.inner.ledger.event(
        "generate",
        cycle=state.get("cycle", 0),
        mode="generate",
        candidate=record,
        rationale=value.rationale,
        repair_round=state.get("repairs", 0),
    )
    return {"candidate": record, "candidate_source": source}


def _strip_fences(source: str) -> str:
    match = re.search(r"```(?:python)?\n(.*?)```", source, re.S)
    return match.group(1) if match else source


def generate(state: OuterState, runtime: Runtime[OuterContext]) -> dict[str, Any]:
    ctx = runtime.context
    if not ctx.acts("mechanism") or state.get("stop_reason") or state.get("on_trial"):
        return {}
    try:
        return compose(state, ctx) if ctx.generate_mode == "compose" else write_module(state, ctx)
    except LLMBudgetExhausted as e:
        return {"stop_reason": str(e), "candidate": None}
