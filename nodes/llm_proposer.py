"""Asking the LLM for a proposal: a schema built from the real search space, every answer checked, bad ones re-asked,
and a recorded fallback when the model cannot give a valid one. This is what `view.ask_llm` of a mechanism calls."""

from __future__ import annotations

import random
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Field, create_model

from mechanisms.space import Param, SearchSpace
from nodes.candidate import EditError, apply_edits
from nodes.context import InnerContext
from nodes.prompts import CODE_SYSTEM, CODE_USER, PROPOSE_SYSTEM, PROPOSE_USER
from nodes.state import InnerState

HISTORY_SHOWN = 10
# No string field of a schema carries maxLength: llama.cpp compiles it into one grammar rule per character and
# fails on long ones. `ask_structured` refuses oversized fields instead.


class Edit(BaseModel):
    search: str = Field(description="exact text of train.py to replace; must occur once")
    replace: str = Field(description="the new text")


class CodeProposal(BaseModel):
    edits: list[Edit] = Field(min_length=1, max_length=3)
    hypothesis: str
    expected_direction: Literal["lower", "higher"]


def allowed_names(space: SearchSpace, frozen: list[str], only: list[str] | None) -> list[str]:
    return [p.name for p in space.params if not p.frozen and p.name not in frozen and (only is None or p.name in only)]


def value_type(p: Param) -> Any:
    """The JSON type of a parameter's value: a constrained decoder then cannot write text where a number goes."""
    if p.kind == "choice":
        return Literal[tuple(p.choices)]
    return {"int": int, "float": float, "bool": bool}[p.kind]


def change_schema(space: SearchSpace, name: str) -> type[BaseModel]:
    fields: dict[str, Any] = {
        "name": (Literal[name], Field(description=describe_param(space[name]))),
        "value": (value_type(space[name]), Field(description=f"new value of {name}")),
    }
    return create_model(f"Change_{name}", **fields)


def proposal_schema(space: SearchSpace, names: list[str]) -> type[BaseModel]:
    """A proposal schema in which each change is one of the allowed parameters with a value of its type (a
    constrained decoder cannot invent a name or a type; any other endpoint's invention fails validation and is
    re-asked). Ranges are checked after parsing, with a message the model can act on."""
    changes = [change_schema(space, name) for name in names]
    change: Any = changes[0]
    if len(changes) > 1:  # tagged by name: a bad answer gets one short error, not one per parameter
        change = Annotated[Union[tuple(changes)], Field(discriminator="name")]  # noqa: UP007 - built at run time
    fields: dict[str, Any] = {
        "changes": (list[change], Field(min_length=1, max_length=3)),
        "hypothesis": (str, Field(description="why this should lower val_bpb")),
        "expected_direction": (Literal["lower", "higher"], Field(description="expected direction of val_bpb")),
    }
    return create_model("Proposal", **fields)


def format_history(experiments: list[dict[str, Any]]) -> str:
    lines = []
    for e in experiments[-HISTORY_SHOWN:]:
        bpb = f"{e['val_bpb']:.6f}" if isinstance(e.get("val_bpb"), float) else "-" * 8
        lines.append(f"{e['id']} {e['status']:<7} {bpb}  {e['description']}  | {e.get('hypothesis', '')[:120]}")
    return "\n".join(lines) or "(none yet)"


def describe_param(p: Param) -> str:
    if p.kind == "choice":
        return f"one of {list(p.choices)}"
    if p.kind == "bool":
        return "true or false"
    return f"{p.kind} in [{p.low:g}, {p.high:g}]{' (log scale)' if p.log else ''}"


def format_space(space: SearchSpace, incumbent: dict[str, Any], names: list[str]) -> str:
    return "\n".join(
        f"{p.name} = {incumbent.get(p.name)!r}  {describe_param(p)}" for p in space.params if p.name in names
    )


def ask_llm(
    state: InnerState,
    ctx: InnerContext,
    guidance: str = "",
    constraints: dict[str, Any] | None = None,
    *,
    caller: str = "propose",
) -> dict[str, Any]:
    """A valid proposal from the LLM, or a recorded fallback. Raises LLMBudgetExhausted when the budget is spent."""
    constraints = constraints or {}
    if ctx.mode == "code" and not constraints.get("only"):
        return _ask_code(state, ctx, guidance, caller)
    settings = state.get("settings", {})
    frozen = list(settings.get("frozen", []))
    names = allowed_names(ctx.space, frozen, constraints.get("only"))
    if not names:
        return fallback_proposal(state, ctx, "no parameter is free to change under these constraints", names)
    incumbent = state.get("incumbent", {})
    prompt = PROPOSE_USER.format(
        space=format_space(ctx.space, incumbent, names),
        frozen=", ".join(frozen) or "none",
        strategy=settings.get("strategy", "explore"),
        guidance=settings.get("guidance", "") or "none",
        history=format_history(state.get("experiments", [])),
        best=state.get("best_bpb"),
        extra=f"Additional guidance for this proposal: {guidance}\n" if guidance else "",
    )
    parsed: dict[str, Any] = {}

    def check(answer: BaseModel) -> str | None:
        changes: dict[str, Any] = {}
        errors: list[str] = []
        for change in answer.changes:  # type: ignore[attr-defined]
            try:
                changes[change.name] = ctx.space.coerce(change.name, change.value)
            except ValueError as e:
                errors.append(f"{change.name}: {e}")
        if errors:
            return "; ".join(errors)
        errors = ctx.space.check_changes(changes, incumbent, frozen)
        if errors:
            return "; ".join(errors)
        parsed["changes"] = changes
        return None

    answer = ctx.ask(
        proposal_schema(ctx.space, names),
        PROPOSE_SYSTEM,
        prompt,
        node=caller,
        check=check,
        iteration=state.get("iteration", 0),
    )
    if answer.fallback or answer.value is None:
        return fallback_proposal(state, ctx, "; ".join(answer.errors[-2:]) or "no valid answer", names)
    return {
        "changes": parsed["changes"],
        "hypothesis": answer.value.hypothesis,  # type: ignore[attr-defined]
        "expected_direction": answer.value.expected_direction,  # type: ignore[attr-defined]
        "source": "llm",
        "attempts": answer.attempts,
        "rejected": answer.errors,
    }


def _ask_code(state: InnerState, ctx: InnerContext, guidance: str, caller: str) -> dict[str, Any]:
    from nodes.train import incumbent_source  # the train node owns how a candidate's source is assembled

    source = incumbent_source(state, ctx)
    prompt = CODE_USER.format(
        source=source,
        history=format_history(state.get("experiments", [])),
        best=state.get("best_bpb"),
        guidance=state.get("settings", {}).get("guidance") or "none",
        extra=f"Additional guidance: {guidance}\n" if guidance else "",
    )

    def check(answer: BaseModel) -> str | None:
        try:
            apply_edits(source, [e.model_dump() for e in answer.edits])  # type: ignore[attr-defined]
        except EditError as e:
            return str(e)
        return None

    answer = ctx.ask(CodeProposal, CODE_SYSTEM, prompt, node=caller, check=check, iteration=state.get("iteration", 0))
    if answer.fallback or answer.value is None:
        names = allowed_names(ctx.space, list(state.get("settings", {}).get("frozen", [])), None)
        return fallback_proposal(state, ctx, "; ".join(answer.errors[-2:]) or "no valid edit", names)
    value: CodeProposal = answer.value
    return {
        "changes": {},
        "edits": [e.model_dump() for e in value.edits],
        "hypothesis": value.hypothesis,
        "expected_direction": value.expected_direction,
        "source": "llm",
        "attempts": answer.attempts,
        "rejected": answer.errors,
    }


def fallback_proposal(state: InnerState, ctx: InnerContext, why: str, names: list[str]) -> dict[str, Any]:
    """A seeded one-parameter step from the incumbent, used when the LLM gave no valid answer; always recorded."""
    rng = random.Random(f"{ctx.seed}:{state.get('iteration', 0)}:fallback")
    incumbent = state.get("incumbent", {})
    frozen = list(state.get("settings", {}).get("frozen", []))
    candidates = names or allowed_names(ctx.space, frozen, None)
    for _ in range(50):
        name = rng.choice(candidates)
        changes = ctx.space.neighbour(incumbent, rng, [name], 0.25)  # the batch rule may repair a second one
        if not ctx.space.check_changes(changes, incumbent, frozen):
            break
    ctx.ledger.event("proposal_fallback", iteration=state.get("iteration", 0), reason=why, changes=changes)
    return {
        "changes": changes,
        "hypothesis": f"fallback step (the LLM gave no valid proposal: {why[:200]})",
        "expected_direction": "lower",
        "source": "fallback",
        "attempts": 0,
        "rejected": [why],
    }
