"""The `generate` node (Level 2): a new propose mechanism for the next segment.

Two modes, recorded as the candidate's origin: "generated" — the LLM writes a mechanism module against the contract,
with repair rounds fed by the validator's errors; "composed" — for a model too weak to write code (the embedded one),
the LLM picks a built-in mechanism family and its parameters through structured output.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping
from typing import Any, Literal

from langgraph.runtime import Runtime
from pydantic import BaseModel, Field, create_model

from llm.structured import LLMBudgetExhausted
from mechanisms.base import MechanismError, builtin_info, declared_header
from mechanisms.policy import MAX_NAME_CHARS
from mechanisms.space import SearchSpace
from nodes.context import OuterContext
from nodes.mechanism_calls import mechanism_record
from nodes.mechanism_loader import builtin_source, coerce_builtin_params, compose_families, mechanism_source
from nodes.prompts import (
    COMPACT_COMPOSE_SYSTEM,
    COMPACT_COMPOSE_USER,
    COMPOSE_SYSTEM,
    COMPOSE_USER,
    GENERATE_SYSTEM,
    GENERATE_USER,
)
from nodes.state import OuterState


class Setting(BaseModel):
    name: str
    value: str


class GeneratedMechanism(BaseModel):
    source: str = Field(description="the whole Python module; its NAME constant names the mechanism")
    rationale: str = Field(default="", description="how it addresses the diagnosis")


def composition_schema(families: tuple[str, ...]) -> type[BaseModel]:
    fields: dict[str, Any] = {
        "family": (Literal[families], Field(description="the mechanism family")),
        "params": (list[Setting], Field(default_factory=list, max_length=8, description="parameters of the family")),
        "rationale": (str, Field(default="", description="why it fits the diagnosis")),
    }
    return create_model("Composition", **fields)


def _families(active: str) -> str:
    lines = []
    for name, entry in compose_families().items():
        if entry["target"] != "propose":
            continue
        params = ", ".join(f"{p}: {spec['default']!r} ({spec['doc']})" for p, spec in entry["params"].items())
        lines.append(f"- {name}: {entry['doc']} Parameters: {params or 'none'}")
    return "\n".join(lines) + f"\n(active: {active})"


def composition_options(active_id: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """label -> (family, parameters): each propose family with its defaults, and with one parameter moved to its
    largest step down or up (`SearchSpace.steps` of the family's parameter schema) or to another choice; the
    mechanism already running is left out, so every label is a valid, new composition."""
    options: dict[str, tuple[str, dict[str, Any]]] = {}
    for family, entry in compose_families().items():
        if entry["target"] != "propose":
            continue
        schema = builtin_info(family).schema
        variants: list[dict[str, Any]] = [{}]
        for name in schema.names if schema is not None else ():
            steps = schema.steps(schema.defaults(), name)  # type: ignore[union-attr]
            variants += [steps[0], steps[-1]] if len(steps) > 1 else steps
        for variant in variants:
            params = coerce_builtin_params(family, variant) if variant else {}
            if mechanism_record(family, "composed", builtin_source(family), params)["id"] == active_id:
                continue
            label = family + "".join(f" {k}={v}" for k, v in variant.items())
            options[label] = (family, params)
    return options


def compose_enumerated(state: OuterState, ctx: OuterContext) -> dict[str, Any]:
    """Compose mode for the embedded model: one enum of compositions (`composition_options`), one short call."""
    diagnosis = state.get("diagnosis") or {}
    options = composition_options(state["active"]["id"])
    docs = {n: e["doc"] for n, e in compose_families().items() if e["target"] == "propose"}
    prompt = COMPACT_COMPOSE_USER.format(
        bottleneck=diagnosis.get("bottleneck"),
        evidence=diagnosis.get("evidence"),
        ideas="; ".join(diagnosis.get("ideas", [])),
        families="\n".join(f"{name}: {doc}" for name, doc in docs.items()),
        options="\n".join(options),
        active=state["active"]["name"],
    )
    fields: dict[str, Any] = {"mechanism": (Literal[tuple(options)], Field(description="the composition"))}
    answer = ctx.inner.ask(
        create_model("Composition", **fields),
        COMPACT_COMPOSE_SYSTEM,
        prompt,
        node="generate",
        level="L2",
        by_construction=True,
        cycle=state.get("cycle", 0),
    )
    value: Any = answer.value
    params: dict[str, Any] = {}
    if value is None:
        family = _family_for(diagnosis, tuple(docs), state["active"]["name"])
        rationale, source = "fallback: the LLM gave no valid composition", "fallback"
    else:
        (family, params), rationale, source = options[value.mechanism], f"chose {value.mechanism}", "llm"
    return composed(state, ctx, family, params, rationale, source, answer.errors)


def compose(state: OuterState, ctx: OuterContext) -> dict[str, Any]:
    if ctx.inner.compact:
        return compose_enumerated(state, ctx)
    diagnosis = state.get("diagnosis") or {}
    catalogue = {n: e for n, e in compose_families().items() if e["target"] == "propose"}
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
    return composed(state, ctx, family, chosen["params"], rationale, source, answer.errors)


def composed(
    state: OuterState,
    ctx: OuterContext,
    family: str,
    params: dict[str, Any],
    rationale: str,
    source: str,
    errors: list[str],
) -> dict[str, Any]:
    """The composed candidate `family(params)`, recorded once per cycle (a replay after a kill writes it once)."""
    record = mechanism_record(family, "composed", builtin_source(family), params)
    cycle = state.get("cycle", 0)
    ctx.inner.ledger.event(
        "generate",
        event_id=f"cycle-{cycle:03d}:generate:compose:{record['id']}",
        cycle=cycle,
        mode="compose",
        candidate=record,
        rationale=rationale,
        source=source,
        errors=errors,
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
    inner = state["inner"]
    repairs = state.get("repairs", 0)
    repair = ""
    if validation and not validation.get("ok") and state.get("candidate_source"):
        repair = (
            f"\nYour previous module was refused by the validator:\n{json.dumps(validation.get('errors'))}\n"
            f"The refused module:\n```python\n{state['candidate_source']}\n```\nFix it.\n"
        )
    settings_frozen = set(inner.get("settings", {}).get("frozen", []))
    frozen = [p.name for p in ctx.inner.space if p.frozen or p.name in settings_frozen]
    prompt = GENERATE_USER.format(
        bottleneck=diagnosis.get("bottleneck"),
        evidence=diagnosis.get("evidence"),
        ideas="; ".join(diagnosis.get("ideas", [])),
        frozen=", ".join(frozen) or "none",
        best=inner.get("best_bpb"),
        space=space_table(ctx.inner.space, inner.get("incumbent", {}), frozen),
        segment=ctx.segment,
        repairs=max(0, ctx.max_repairs - repairs),
        source=active_source(state, ctx),
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
    source = extract_module(value.source)
    record = mechanism_record(record_name(source), "generated", source)
    ctx.inner.ledger.event(
        "generate",
        # a node replayed after a kill, with the same answer, does not record it twice
        event_id=f"cycle-{state.get('cycle', 0):03d}:generate:{repairs}:{record['id']}",
        cycle=state.get("cycle", 0),
        mode="generate",
        candidate=record,
        rationale=value.rationale,
        repair_round=repairs,
    )
    return {"candidate": record, "candidate_source": source}


def active_source(state: OuterState, ctx: OuterContext) -> str:
    try:
        return mechanism_source(state["active"], ctx.inner.ledger.root)
    except (OSError, MechanismError) as e:  # a prompt without it beats a run that stops
        return f"# (the active mechanism's source could not be read: {e})"


def space_table(space: SearchSpace, incumbent: Mapping[str, Any], frozen: list[str]) -> str:
    """The run's search space as the model reads it: one row per parameter, with the incumbent's value."""
    rows = [
        "| name | kind | range or choices | scale | multiple_of | incumbent | frozen | meaning |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in space:
        if p.kind in ("int", "float") and p.low is not None and p.high is not None:
            low, high = (int(p.low), int(p.high)) if p.kind == "int" else (p.low, p.high)
            bounds, scale = f"[{low!r}, {high!r}]", "log" if p.log else "linear"
        else:
            bounds, scale = ", ".join(repr(c) for c in (p.choices or (True, False))), "-"
        value = incumbent.get(p.name, p.default)
        rule = "*".join(p.multiple_of) or "-"
        frozen_text = "yes" if p.name in frozen else "no"
        meaning = " ".join(p.doc.split()).replace("|", "/") or "-"
        rows.append(f"| {p.name} | {p.kind} | {bounds} | {scale} | {rule} | {value!r} | {frozen_text} | {meaning} |")
    return "\n".join(rows)


# A fence: ``` or ~~~ (three or more), an info string, the body, the same fence closing it (or the end: truncated).
_FENCE = re.compile(
    r"^[ \t]*(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)\n(?P<body>.*?)(?:^[ \t]*(?P=fence)[ \t]*$|\Z)", re.M | re.S
)
_PYTHON_INFO = frozenset({"", "py", "python", "python3", "py3"})
_CODE_START = re.compile(r"^(\"\"\"|'''|#|import |from |def |class |@|[A-Za-z_]\w* *(:[^=]*)?=)")
_NAME_LINE = re.compile(r"^NAME\s*(?::[^=\n]*)?=\s*(?P<q>['\"])(?P<name>[^'\"\n]*)(?P=q)", re.M)


def extract_module(text: str) -> str:
    """The Python module in a model's answer: the fenced block (``` or ~~~, info string py / python / Python /
    python3 or none, CRLF line ends) that declares NAME and a function; without a fence, the code between the
    prose lines around it."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    blocks = [
        m.group("body") for m in _FENCE.finditer(text) if m.group("info").strip().lower().split(" ")[0] in _PYTHON_INFO
    ]
    if blocks:
        declaring = [b for b in blocks if _NAME_LINE.search(b) and re.search(r"^def \w+\(", b, re.M)]
        return _tidy(max(declaring or blocks, key=len))
    if _parses(text):
        return text  # already a module: kept as written
    lines = text.split("\n")
    prose_tail = len(lines)  # the lines after the code: prose (not indented, not code-like) or blank
    while prose_tail > 0 and not (
        lines[prose_tail - 1].startswith((" ", "\t")) or _CODE_START.match(lines[prose_tail - 1])
    ):
        prose_tail -= 1
    for first in [i for i, line in enumerate(lines) if _CODE_START.match(line)][:3]:
        for last in range(len(lines), prose_tail - 1, -1):
            chunk = "\n".join(lines[first:last])
            if _NAME_LINE.search(chunk) and _parses(chunk):
                return _tidy(chunk)
    return _tidy(text)  # not a module: the validator says why, with line numbers


def _parses(text: str) -> bool:
    try:
        ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return True


def _tidy(source: str) -> str:
    return source.strip("\n") + "\n"


def record_name(source: str) -> str:
    """The mechanism's name: the module's own NAME, its single source. A module without a usable NAME is refused by
    the validator; its record is named "unnamed" so that its folder can still keep it."""
    try:
        name = declared_header(source)[0]  # as the validator and the loader read it (the last top-level NAME)
    except (MechanismError, RecursionError, MemoryError, ValueError):
        match = _NAME_LINE.search(source)
        name = match.group("name") if match else ""
    return name if name.isidentifier() and len(name) <= MAX_NAME_CHARS else "unnamed"


def generate(state: OuterState, runtime: Runtime[OuterContext]) -> dict[str, Any]:
    ctx = runtime.context
    if not ctx.acts("mechanism") or state.get("stop_reason") or state.get("on_trial"):
        return {}
    try:
        return compose(state, ctx) if ctx.generate_mode == "compose" else write_module(state, ctx)
    except LLMBudgetExhausted as e:
        return {"stop_reason": str(e), "candidate": None}
