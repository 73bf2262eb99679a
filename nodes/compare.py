"""The `compare` node: after the segment a new mechanism ran in, keep it if the search improved more than in the
segment before it; otherwise roll back to the previous mechanism. The decision and its evidence go to the trace."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from checkpoints.run_folder import write_json_atomic
from nodes.context import OuterContext
from nodes.state import OuterState, SegmentRecord


def judge(trial: SegmentRecord, before: SegmentRecord | None, baseline_bpb: float | None = None) -> tuple[bool, str]:
    """Keep when the trial segment moved the best further than the segment before it (ties roll back: no evidence).

    The first segment trains the baseline itself, so it has no best before it: its progress is measured from the
    baseline's val_bpb (else any progress at all would keep the first mechanism injected after it)."""
    if trial["crashes"] > trial["last"] - trial["first"] - trial["crashes"]:
        return False, f"more crashes ({trial['crashes']}) than successful experiments in its segment"
    reference = progress_of(before, baseline_bpb) if before else 0.0
    if trial["progress"] > reference:
        return True, f"progress {trial['progress']:.6f} bpb in its segment against {reference:.6f} before"
    return False, f"progress {trial['progress']:.6f} bpb in its segment, not more than {reference:.6f} before"


def progress_of(segment: SegmentRecord, baseline_bpb: float | None) -> float:
    """A segment's progress; for the segment that trained the baseline, from the baseline to its best."""
    after = segment.get("best_after")
    if segment.get("best_before") is None and baseline_bpb is not None and after is not None:
        return round(baseline_bpb - after, 6)
    return segment["progress"]


def baseline_of(experiments: list[dict[str, Any]]) -> float | None:
    first = next((e for e in experiments if e.get("iteration") == 0), None)
    if first is None or first.get("status") == "crash" or not isinstance(first.get("val_bpb"), float):
        return None
    return float(first["val_bpb"])


def compare(state: OuterState, runtime: Runtime[OuterContext]) -> dict[str, Any]:
    ctx = runtime.context
    segments = state.get("segments", [])
    if not state.get("on_trial") or not segments:
        return {}
    trial = segments[-1]
    before = segments[-2] if len(segments) > 1 else None
    keep, evidence = judge(trial, before, baseline_of(state["inner"].get("experiments", [])))
    active, previous = state["active"], state.get("previous")
    decision: dict[str, Any] = {
        "cycle": state.get("cycle", 0),
        "event": "kept" if keep else "rolled_back",
        "mechanism": active["id"],
        "evidence": evidence,
        "segment": trial,
        "segment_before": before,
    }
    ctx.inner.ledger.event("compare", event_id=f"cycle-{decision['cycle']:03d}:compare:{active['id']}", **decision)
    folder = ctx.inner.ledger.mechanism_dir(active["id"].replace("@", "-"))
    write_json_atomic(folder / "effect.json", decision)
    update: dict[str, Any] = {"on_trial": False, "history": [*state.get("history", []), decision]}
    if not keep and previous:
        update.update(active=previous, previous=None)
    return update
