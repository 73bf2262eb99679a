"""The `compare` node: after the segment a new mechanism ran in, keep it if the search improved more than in the
segment before it; otherwise roll back to the previous mechanism. The decision and its evidence go to the trace."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from nodes.context import OuterContext
from nodes.ledger import write_json_atomic
from nodes.state import OuterState, SegmentRecord


def judge(trial: SegmentRecord, before: SegmentRecord | None) -> tuple[bool, str]:
    """Keep when the trial segment moved the best further than the segment before it (ties roll back: no evidence)."""
    if trial["crashes"] > trial["last"] - trial["first"] - trial["crashes"]:
        return False, f"more crashes ({trial['crashes']}) than successful experiments in its segment"
    reference = before["progress"] if before else 0.0
    if trial["progress"] > reference:
        return True, f"progress {trial['progress']:.6f} bpb in its segment against {reference:.6f} before"
    return False, f"progress {trial['progress']:.6f} bpb in its segment, not more than {reference:.6f} before"


def compare(state: OuterState, runtime: Runtime[OuterContext]) -> dict[str, Any]:
    ctx = runtime.context
    segments = state.get("segments", [])
    if not state.get("on_trial") or not segments:
        return {}
    trial = segments[-1]
    before = segments[-2] if len(segments) > 1 else None
    keep, evidence = judge(trial, before)
    active, previous = state["active"], state.get("previous")
    decision: dict[str, Any] = {
        "cycle": state.get("cycle", 0),
        "event": "kept" if keep else "rolled_back",
        "mechanism": active["id"],
        "evidence": evidence,
        "segment": trial,
        "segment_before": before,
    }
    ctx.inner.ledger.event("compare", **decision)
    folder = ctx.inner.ledger.mechanism_dir(active["id"].replace("@", "-"))
    write_json_atomic(folder / "effect.json", decision)
    update: dict[str, Any] = {"on_trial": False, "history": [*state.get("history", []), decision]}
    if not keep and previous:
        update.update(active=previous, previous=None)
    return update
