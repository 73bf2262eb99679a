"""The `inject` node: make the validated candidate the active propose mechanism.

State records its id, source hash and origin; the next `run_inner` rebuilds the inner graph from that record (the
builders live in graphs/), so a resumed run rebuilds the same graph from state alone. Before it is accepted, the
candidate must fit the slot it fills (a `propose` mechanism: a `decide` one would run as the wrong node) and load from
its record as `run_inner` will load it; otherwise it is refused, never raised."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from langgraph.runtime import Runtime

from nodes.context import OuterContext
from nodes.mechanism_loader import load_mechanism
from nodes.state import MechanismRecord, OuterState
from nodes.validate import keep_candidate

SLOT = "propose"  # the inner-graph node inject fills (the run's decide mechanism is chosen at the start only)


def injection_problem(record: dict[str, Any], run_dir: Path) -> str | None:
    """Why `record` cannot run as the inner graph's propose node, or None."""
    if record.get("target") != SLOT:
        return f"{record['id']} is a {record.get('target')!r} mechanism: it cannot run as the {SLOT} node"
    try:
        load_mechanism(cast(MechanismRecord, record), run_dir)
    except Exception as e:  # noqa: BLE001 - a candidate that cannot be built is refused; it never stops the run
        return f"the inner graph could not be built with it: {type(e).__name__}: {e}"
    return None


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
    problem = injection_problem(record, ctx.inner.ledger.root)
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
