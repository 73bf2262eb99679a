"""The `validate` node (Level 2): the candidate mechanism must pass the static policy, run in the sandbox, honour
the contract on synthetic traces and give sound outputs in a counterfactual replay of the recorded trace — before
it may become a node of the inner graph. A refused candidate is recorded with its reasons; the run goes on with the
mechanism it has."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from mechanisms.validation import validate_mechanism
from nodes.context import OuterContext
from nodes.state import OuterState


def validate(state: OuterState, runtime: Runtime[OuterContext]) -> dict[str, Any]:
    ctx = runtime.context
    candidate = state.get("candidate")
    if not ctx.acts("mechanism") or state.get("stop_reason") or state.get("on_trial"):
        return {}
    if candidate is None:
        ctx.inner.ledger.event("validate", cycle=state.get("cycle", 0), ok=False, errors=["no candidate was produced"])
        return {"validation": {"ok": False, "errors": ["no candidate was produced"]}}
    report = validate_mechanism(
        state.get("candidate_source") or "",
        ctx.inner.space,
        list(state["inner"].get("experiments", [])),
        seed=ctx.inner.seed,
        params=candidate.get("params", {}),
    ).to_dict()
    ctx.inner.ledger.event("validate", cycle=state.get("cycle", 0), mechanism=candidate["id"], **report)
    update: dict[str, Any] = {"validation": report}
    if not report["ok"]:
        update["repairs"] = state.get("repairs", 0) + 1
        update["history"] = [
            *state.get("history", []),
            {
                "cycle": state.get("cycle", 0),
                "event": "refused",
                "mechanism": candidate["id"],
                "reason": report["errors"][:3],
            },
        ]
    return update
