"""The `inject` node: make the validated candidate the active propose mechanism.

State records its id, source hash and origin; the next `run_inner` rebuilds the inner graph from that record (the
builders live in graphs/), so a resumed run rebuilds the same graph from state alone. Before it is accepted, the
rebuilt graph's topology is checked against the one it replaces."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from nodes.context import OuterContext
from nodes.state import OuterState
from nodes.validate import keep_candidate


def inject(state: OuterState, runtime: Runtime[OuterContext]) -> dict[str, Any]:
    ctx = runtime.context
    candidate = state.get("candidate")
    validation = state.get("validation") or {}
    if candidate is None or not validation.get("ok"):
        return {}
    source = state.get("candidate_source") or ""
    diagnosis = state.get("diagnosis") or {}
    record = keep_candidate(
        ctx.inner.ledger, candidate, source, diagnosis, validation, "validated", state.get("cycle", 0)
    )
    try:
        problem = ctx.topology_check(state["active"], record) if ctx.topology_check else None
    except Exception as e:  # noqa: BLE001 - a candidate that cannot be built is refused; it never stops the run
        problem = f"the inner graph could not be built with it: {type(e).__name__}: {e}"
    if problem:
        keep_candidate(
            ctx.inner.ledger,
            candidate,
            source,
            diagnosis,
            {**validation, "inject": problem},
            "refused",
            state.get("cycle", 0),
        )
        ctx.inner.ledger.event(
            "inject",
            event_id=f"cycle-{state.get('cycle', 0):03d}:inject:{record['id']}",
            cycle=state.get("cycle", 0),
            mechanism=record["id"],
            injected=False,
            reason=problem,
        )
        return {
            "candidate": None,
            "history": [
                *state.get("history", []),
                {"cycle": state.get("cycle", 0), "event": "refused", "mechanism": record["id"], "reason": problem},
            ],
        }
    keep_candidate(ctx.inner.ledger, candidate, source, diagnosis, validation, "injected", state.get("cycle", 0))
    ctx.inner.ledger.event(
        "inject",
        event_id=f"cycle-{state.get('cycle', 0):03d}:inject:{record['id']}",
        cycle=state.get("cycle", 0),
        mechanism=record["id"],
        injected=True,
        replaces=state["active"]["id"],
        origin=record["origin"],
    )
    return {
        "active": record,
        "previous": state["active"],
        "on_trial": True,
        "candidate": None,
        "history": [
            *state.get("history", []),
            {
                "cycle": state.get("cycle", 0),
                "event": "injected",
                "mechanism": record["id"],
                "origin": record["origin"],
                "replaces": state["active"]["id"],
            },
        ],
    }
