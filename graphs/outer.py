"""The outer loop: run a segment of the inner loop, judge the mechanism that ran, adjust (Level 1.5), diagnose,
write or compose a mechanism, validate it and inject it as the inner graph's `propose` node (Level 2).

    START → run_inner → compare → adjust → analyze → generate → validate ─┬→ inject → run_inner
                ↑ └→ END (segments done)                      ↑ repair ←──┤
                └──────────────────────────────────────────── refused ←───┘

Every step runs at every level; a step its level does not include only passes, so all ablation groups go through
the same code path and differ only in which steps act.
"""

from __future__ import annotations

import contextvars
from typing import Any, Literal, cast

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from langgraph.types import StateSnapshot

from graphs.inner import InnerGraph, inner_graph_for
from nodes.adjust import adjust
from nodes.analyze import analyze
from nodes.compare import compare
from nodes.context import OuterContext
from nodes.generate import generate
from nodes.inject import inject
from nodes.segment_stats import segment_record
from nodes.state import InnerState, MechanismRecord, OuterState
from nodes.validate import validate

RECURSION_LIMIT = 100_000


def pending(snapshot: StateSnapshot) -> bool:
    """Work left on a thread: a next node, or a task whose writes were saved before a kill came ahead of the next
    checkpoint (LangGraph leaves such a task out of `next`; invoking with None applies its writes and goes on)."""
    return bool(snapshot.next or snapshot.tasks)


def finished(snapshot: StateSnapshot) -> bool:
    return bool(snapshot.values) and not pending(snapshot)


def segment_graph(record: MechanismRecord, decide: MechanismRecord | None, ctx: OuterContext) -> InnerGraph:
    """The inner graph with `record`'s mechanism as its `propose` node (and the run's `decide` mechanism, if it
    started with one), rebuilt from the records alone."""
    return inner_graph_for(record, decide, ctx.inner.ledger.root).compile(checkpointer=ctx.checkpointer, name="inner")


def run_inner(state: OuterState, runtime: Runtime[OuterContext]) -> dict[str, Any]:
    """Run the inner graph for one segment under its own thread id, carrying the whole inner state across."""
    ctx = runtime.context
    cycle, inner = state.get("cycle", 0), state["inner"]
    first = inner.get("iteration", 0)
    graph = segment_graph(state["active"], inner.get("mechanisms", {}).get("decide"), ctx)
    config: RunnableConfig = {"configurable": {"thread_id": f"segment-{cycle:03d}"}, "recursion_limit": RECURSION_LIMIT}
    snapshot = graph.get_state(config)
    if finished(snapshot):
        final = snapshot.values  # finished before a kill interrupted the outer step: reuse, never re-run
    else:
        start = (
            None
            if pending(snapshot)
            else cast(InnerState, {**inner, "stop_at": min(first + ctx.segment, state["total"]), "stop_reason": None})
        )
        ctx.inner.ledger.event(
            "segment_start",
            event_id=f"segment-{cycle:03d}:start",
            cycle=cycle,
            mechanism=state["active"]["id"],
            first=first,
        )
        # A fresh context: the inner graph is a separate run on its own thread, not a subgraph of this node.
        final = contextvars.Context().run(lambda: graph.invoke(start, config, context=ctx.inner, durability="sync"))
    segment = segment_record(
        final.get("experiments", []), cycle, state["active"]["id"], first, final.get("iteration", first)
    )
    ctx.inner.ledger.event("segment_end", event_id=f"segment-{cycle:03d}:end", **segment)
    reason = final.get("stop_reason")
    update: dict[str, Any] = {
        "inner": {**final, "stop_reason": None},
        "cycle": cycle + 1,
        "segments": [*state.get("segments", []), segment],
    }
    if reason and reason != "iterations done":
        update["stop_reason"] = reason
    elif final.get("iteration", 0) >= state["total"]:
        update["stop_reason"] = "all iterations done"
    return update


def route_after_inner(state: OuterState) -> Literal["compare", "__end__"]:
    return "compare" if not state.get("stop_reason") else END  # type: ignore[return-value]  # langgraph types END as str


def route_after_validate(
    state: OuterState, runtime: Runtime[OuterContext]
) -> Literal["inject", "generate", "run_inner"]:
    validation = state.get("validation") or {}
    if state.get("candidate") and validation.get("ok"):
        return "inject"
    if (
        state.get("candidate_source") is not None
        and validation
        and not validation.get("ok")
        and state.get("repairs", 0) <= runtime.context.max_repairs
        and runtime.context.generate_mode == "generate"
        and not state.get("stop_reason")
    ):
        return "generate"
    return "run_inner"


def build_outer_graph() -> StateGraph[OuterState, OuterContext, OuterState, OuterState]:
    builder = StateGraph(OuterState, context_schema=OuterContext)
    for name, node in (
        ("run_inner", run_inner),
        ("compare", compare),
        ("adjust", adjust),
        ("analyze", analyze),
        ("generate", generate),
        ("validate", validate),
        ("inject", inject),
    ):
        builder.add_node(name, node)
    builder.add_edge(START, "run_inner")
    builder.add_conditional_edges("run_inner", route_after_inner, ["compare", END])
    builder.add_edge("compare", "adjust")
    builder.add_edge("adjust", "analyze")
    builder.add_edge("analyze", "generate")
    builder.add_edge("generate", "validate")
    builder.add_conditional_edges("validate", route_after_validate, ["inject", "generate", "run_inner"])
    builder.add_edge("inject", "run_inner")
    return builder


def default_graph() -> CompiledStateGraph[OuterState, OuterContext, OuterState, OuterState]:
    """The outer graph compiled without a checkpointer (for `langgraph dev`; the CLI attaches SqliteSaver)."""
    return build_outer_graph().compile(name="bilevel")


def initial_outer_state(inner: InnerState, active: MechanismRecord, level: str, total: int) -> OuterState:
    return OuterState(
        level=level,
        cycle=0,
        total=total,
        inner=inner,
        active=active,
        previous=None,
        on_trial=False,
        candidate=None,
        candidate_source=None,
        diagnosis=None,
        validation=None,
        repairs=0,
        segments=[],
        history=[],
        stop_reason=None,
    )
