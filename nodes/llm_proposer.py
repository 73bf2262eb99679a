"""Asking the LLM for a proposal: a schema built from the real search space, and a recorded fallback when the model
cannot give a valid answer. This is what `view.ask_llm` of a mechanism calls.

Two schemas. "values" (the embedded model's, auto-selected for it): each change names a free parameter and one of
its listed steps around the incumbent (`SearchSpace.steps`, minus configurations already trained), both enums, so a
grammar-constrained decoder can only write a valid, untried proposal: one short call, no re-ask. ("moves" is the same
with increase/decrease x small/large labels, kept for measurement.) "free" (capable endpoints): any value of the
parameter's type, checked after parsing and re-asked with the error."""

from __future__ import annotations

import random
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Field, create_model

from mechanisms.builtin.local_search import config_key, local_step, tried_configs, untried_steps
from mechanisms.space import Param, SearchSpace
from nodes.context import InnerContext
from nodes.prompts import (
    CODE_SYSTEM,
    CODE_USER,
    COMPACT_PROPOSE_SYSTEM,
    COMPACT_PROPOSE_USER,
    PROPOSE_SYSTEM,
    PROPOSE_USER,
    STRATEGY_HINTS,
)
from nodes.state import InnerState
from trials.candidate import EditError, apply_edits

HISTORY_SHOWN = 10
COMPACT_HISTORY = 6  # experiments the embedded model's prompt shows (each a few tokens)
COMPACT_LINE = 80  # characters of one experiment's changes in that history (a whole-configuration draw is longer)
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
    """The free-value schema (for capable endpoints): each change is one of the allowed parameters with a value of
    its type (a constrained decoder cannot invent a name or a type; any other endpoint's invention fails validation
    and is re-asked). Ranges, no-ops and repeats are checked after parsing, with a message the model can act on."""
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


# ---- enumerated proposals: every answer a grammar-constrained decoder can produce is a valid proposal ----------


def format_value(value: Any) -> str:
    """How a value is written in an enumerated schema and in the prompt: JSON-like and short."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def step_label(space: SearchSpace, name: str, current: Any, value: Any, style: str) -> str:
    """The label of one step: its new value ("values"), or its direction and size ("moves"; choices and bools
    keep their value as the label: they have no direction)."""
    p = space[name]
    if style == "values" or p.kind in ("choice", "bool"):
        return format_value(value)
    if p.log:
        factor = value / current
        size = "small" if 0.6 < factor < 1.6 else "large"
    else:
        size = "small" if abs(value - current) <= space.grid_step(name) * 1.01 else "large"
    return f"{'increase' if value > current else 'decrease'}_{size}"


def step_options(
    space: SearchSpace,
    incumbent: dict[str, Any],
    names: list[str],
    frozen: list[str],
    tried: set[str],
    style: str = "values",
) -> dict[str, dict[str, dict[str, Any]]]:
    """name -> label -> changes: the one-parameter steps an enumerated schema offers (in range, not a no-op,
    keeping every multiple_of rule, not a configuration tried before); names with no such step are left out."""
    options: dict[str, dict[str, dict[str, Any]]] = {}
    for name, steps in untried_steps(space, incumbent, names, frozen, tried).items():
        current = incumbent.get(name, space[name].default)
        labelled: dict[str, dict[str, Any]] = {}
        for step in steps:
            label = step_label(space, name, current, step[name], style)
            if label in labelled:  # two steps of one size on a side (a repair merged them): keep the nearer one
                continue
            labelled[label] = step
        options[name] = labelled
    return options


def option_label(name: str, label: str, style: str) -> str:
    """How one step is named in the schema's enum: `NAME=value`, or `NAME move` for the "moves" style."""
    return f"{name}={label}" if style == "values" else f"{name} {label}"


def enumerated_schema(options: dict[str, dict[str, dict[str, Any]]], style: str = "values") -> type[BaseModel]:
    """A proposal schema built from `step_options`: one field whose enum is every listed step (`NAME=value`), so a
    decoder held to the schema's grammar can only write a valid, untried proposal. One flat enum, not a union of
    per-parameter objects: llama.cpp checks every vocabulary token against the grammar at each decoded token, and a
    flat enum of short strings costs a tenth of the union's time (measured in docs/inner-loop.md)."""
    labels = tuple(option_label(name, label, style) for name, labelled in options.items() for label in labelled)
    fields: dict[str, Any] = {"step": (Literal[labels], Field(description="the parameter and its new value"))}
    return create_model("Proposal", **fields)


def map_enumerated(
    answer: BaseModel, options: dict[str, dict[str, dict[str, Any]]], style: str = "values"
) -> dict[str, Any]:
    """The changes an enumerated answer stands for: a listed step, valid and untried by construction."""
    chosen = answer.step  # type: ignore[attr-defined]
    for name, labelled in options.items():
        for label, step in labelled.items():
            if option_label(name, label, style) == chosen:
                return dict(step)
    raise ValueError(f"{chosen!r} is not one of the listed steps")


def describe_steps(space: SearchSpace, incumbent: dict[str, Any], changes: dict[str, Any]) -> str:
    parts = []
    for name, value in changes.items():
        p, old = space[name], incumbent.get(name, space[name].default)
        scale = f" (x{value / old:.2g})" if p.log and old else ""
        parts.append(f"{name} {format_value(old)} -> {format_value(value)}{scale}")
    return ", ".join(parts)


# ---- prompts -------------------------------------------------------------------------------------------------------


def format_history(experiments: list[dict[str, Any]], shown: int = HISTORY_SHOWN, width: int = 120) -> str:
    lines = []
    for e in experiments[-shown:]:
        bpb = f"{e['val_bpb']:.6f}" if isinstance(e.get("val_bpb"), float) else "-" * 8
        hypothesis = f"  | {e.get('hypothesis', '')[:width]}" if width else ""
        lines.append(f"{e['id']} {e['status']:<7} {bpb}  {e['description']}{hypothesis}")
    return "\n".join(lines) or "(none yet)"


def describe_param(p: Param) -> str:
    if p.kind == "choice":
        return f"one of {list(p.choices)}"
    if p.kind == "bool":
        return "true or false"
    return f"{p.kind} in [{p.low:g}, {p.high:g}]{' (log scale)' if p.log else ''}"


def format_space(space: SearchSpace, incumbent: dict[str, Any], names: list[str]) -> str:
    return "\n".join(
        f"{p.name} = {incumbent.get(p.name)!r}  {describe_param(p)}{f'  ({p.doc})' if p.doc else ''}"
        for p in space.params
        if p.name in names
    )


def parameter_meanings(space: SearchSpace) -> str:
    """One line per parameter: its name and the human comment of its declaration in train.py."""
    return "\n".join(f"{p.name}: {p.doc or describe_param(p)}" for p in space.params)


def format_options(
    space: SearchSpace, incumbent: dict[str, Any], options: dict[str, dict[str, dict[str, Any]]], style: str
) -> str:
    lines = []
    for name, labelled in options.items():
        current = format_value(incumbent.get(name, space[name].default))
        shown = [(label, format_value(step[name])) for label, step in labelled.items()]
        listed = ", ".join(label if label == value else f"{label} ({value})" for label, value in shown)
        lines.append(f"{name} = {current}: {listed}")
    return "\n".join(lines)


def compact_history(experiments: list[dict[str, Any]], shown: int = COMPACT_HISTORY) -> str:
    """The last experiments in a few tokens each: what changed, the score, the verdict."""
    lines = []
    for e in experiments[-shown:]:
        bpb = f"{e['val_bpb']:.4f}" if isinstance(e.get("val_bpb"), float) else "-"
        what = e.get("description") or ", ".join(f"{k}={format_value(v)}" for k, v in e.get("changes", {}).items())
        lines.append(f"{(what or 'baseline')[:COMPACT_LINE]}: {bpb} {e['status']}")
    return "\n".join(lines) or "(none yet)"


# ---- the proposer --------------------------------------------------------------------------------------------------


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
    if ctx.proposal_style in ("values", "moves"):
        return _ask_enumerated(state, ctx, guidance, names, caller)
    incumbent = state.get("incumbent", {})
    tried = tried_configs(ctx.space, state.get("experiments", []))
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
        if config_key(ctx.space, {**incumbent, **changes}) in tried:
            return f"{describe_steps(ctx.space, incumbent, changes)} leads to a configuration already trained"
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


def _ask_enumerated(
    state: InnerState, ctx: InnerContext, guidance: str, names: list[str], caller: str
) -> dict[str, Any]:
    """One short call whose every grammar-legal answer is a valid, untried proposal (the embedded model's path)."""
    settings = state.get("settings", {})
    frozen = list(settings.get("frozen", []))
    incumbent = state.get("incumbent", {})
    experiments = state.get("experiments", [])
    tried = tried_configs(ctx.space, experiments) | {config_key(ctx.space, incumbent)}
    style = ctx.proposal_style
    options = step_options(ctx.space, incumbent, names, frozen, tried, style)
    if not options:
        return fallback_proposal(state, ctx, "every listed step of the free parameters was tried already", names)
    best = state.get("best_bpb")
    steering = " ".join(
        text
        for text in (
            STRATEGY_HINTS.get(settings.get("strategy", "explore"), ""),
            settings.get("guidance", ""),
            guidance,
        )
        if text
    )
    prompt = COMPACT_PROPOSE_USER.format(
        # the prompt lists every step from the incumbent (a tried one is in the history), so it changes only when
        # the incumbent does and the server's prefix cache serves it; the schema's enum holds the untried ones
        options=format_options(
            ctx.space, incumbent, step_options(ctx.space, incumbent, names, frozen, set(), style), style
        ),
        history=compact_history(experiments),
        best=f"{best:.4f}" if isinstance(best, float) else "none yet",
        steering=f"{steering[:300]}\n" if steering else "",
        sep="=" if style == "values" else " ",
    )
    mapped: dict[str, Any] = {}

    def check(answer: BaseModel) -> str | None:
        try:  # every answer that parses is a listed step: this only guards an endpoint that ignores the enum
            mapped["changes"] = map_enumerated(answer, options, style)
        except ValueError as e:
            return str(e)
        return None

    answer = ctx.ask(
        enumerated_schema(options, style),
        COMPACT_PROPOSE_SYSTEM.format(task=ctx.task, meanings=parameter_meanings(ctx.space)),
        prompt,
        node=caller,
        check=check,
        by_construction=True,
        iteration=state.get("iteration", 0),
    )
    if answer.fallback or answer.value is None:
        return fallback_proposal(state, ctx, "; ".join(answer.errors[-2:]) or "no valid answer", names)
    changes = mapped["changes"]
    return {
        "changes": changes,
        "hypothesis": f"LLM step: {describe_steps(ctx.space, incumbent, changes)}",
        "expected_direction": "lower",
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
    """A seeded one-parameter step from the incumbent to a configuration not tried yet (the `local_search`
    mechanism's step), used when the LLM gave no valid answer; always recorded."""
    rng = random.Random(f"{ctx.seed}:{state.get('iteration', 0)}:fallback")
    incumbent = state.get("incumbent", {})
    frozen = list(state.get("settings", {}).get("frozen", []))
    candidates = names or allowed_names(ctx.space, frozen, None)
    tried = tried_configs(ctx.space, state.get("experiments", [])) | {config_key(ctx.space, incumbent)}
    changes = local_step(ctx.space, incumbent, candidates, frozen, tried, rng)
    if changes is None:  # nothing untried nearby: a repeat is still a valid experiment (recorded as such)
        changes = ctx.space.neighbour(incumbent, rng, [rng.choice(candidates)], 0.25)
        why = f"{why}; no untried step was found"
    ctx.ledger.event("proposal_fallback", iteration=state.get("iteration", 0), reason=why, changes=changes)
    return {
        "changes": changes,
        "hypothesis": f"fallback step (the LLM gave no valid proposal: {why[:200]})",
        "expected_direction": "lower",
        "source": "fallback",
        "attempts": 0,
        "rejected": [why],
    }
