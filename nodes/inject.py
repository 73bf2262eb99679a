"""The `inject` node: make the validated candidate the active propose mechanism.

State records its id, source hash and origin; the next `run_inner` rebuilds the inner graph from that record (the
builders live in graphs/), so a resumed run rebuilds the same graph from state alone. Before it is accepted, the
rebuilt graph's topology is checked against the one it replaces."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from nodes.context import OuterContext
from nodes.ledger import write_atomic, write_json_atomic
from nodes.state import OuterState


def inject(state: OuterState, runtime: Runtime[OuterContext]) -> dict[str, Any]:
    ctx = runtime.context
    candidate = state.get("candidate")
    validation = state.get("validation") or {}
    if candidate is None or not validation.get("ok"):
        return {}
    record: dict[str, Any] = dict(candidate)
    folder = ctx.inner.ledger.mechanism_dir(record["id"].replace("@", "-"))
    source = state.get("candidate_source") or ""
    write_atomic(folder / "source.py", source)
    if record["origin"] == "generated":
        record["path"] = str((folder / "source.py").relative_to(ctx.inner.ledger.root))
    write_json_atomic(folder / "diagnosis.json", state.get("diagnosis") or {})
    write_json_atomic(folder / "validation.json", validation)
    write_json_atomic(folder / "record.json", record)
    problem = ctx.topology_check(state["active"], record) if ctx.topology_check else None
    if problem:
        ctx.inner.ledger.event(
            "inject", cycle=state.get("cycle", 0), mechanism=record["id"], injected=False, reason=problem
        )
        return {
            "candidate": None,
            "history": [
                *state.get("history", []),
                {"cycle": state.get("cycle", 0), "event": "refused", "mechanism": record["id"], "reason": problem},
            ],
        }
    ctx.inner.ledger.event(
        "inject",
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
