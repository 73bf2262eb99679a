"""Continuing a run from its ledger when its checkpoint database is lost: the inner loop's state rebuilt from the
`experiment` events of trace.jsonl, by the same rules the `decide` node applies.

    python -m graphs.bilevel resume RUN --from-ledger

What the ledger does not hold is started afresh: the outer loop restarts from the run's start mechanism (its
diagnosis, candidate and trial are lost), and an experiment that was proposed or trained but not decided is run
again (its folder is set aside first, so its outcome is not reused for a new proposal).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from checkpoints import trace

LEDGER_FIELDS = ("event_id", "kind", "time")  # what the ledger adds to a record when it writes the event
DEFAULT_SETTINGS = {"strategy": "explore", "frozen": [], "guidance": ""}


class LedgerError(RuntimeError):
    """The trace cannot be turned back into a state (missing, or experiments out of order)."""


def trace_events(run_dir: Path) -> list[dict[str, Any]]:
    """Every event of trace.jsonl in order (checkpoints/trace.py: a torn last line is skipped)."""
    read = trace.read(run_dir)
    if read.missing:
        raise LedgerError(f"{Path(run_dir) / trace.TRACE} is missing: there is no ledger to continue from")
    return read.events


def experiments_from(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The experiment records as state holds them (checkpoints/trace.py: each once, in the run's order, without what
    the ledger adds); refuses a trace whose ids are not e0000, e0001, ..."""
    ordered = [{k: v for k, v in r.items() if k not in LEDGER_FIELDS} for r in trace.experiments(events)]
    expected = [f"e{i:04d}" for i in range(len(ordered))]
    found = [r["id"] for r in ordered]
    if found != expected:
        raise LedgerError(f"the trace's experiments are not e0000.. in order: {found[:20]}")
    return ordered


def inner_state(events: list[dict[str, Any]], defaults: dict[str, Any], stop_at: int) -> dict[str, Any]:
    """The inner state after the recorded experiments: incumbent = the last kept, best = the lowest val_bpb of a
    kept experiment (as `decide` sets them); settings = the last applied Level 1.5 adjustment."""
    experiments = experiments_from(events)
    incumbent, incumbent_id = dict(defaults), None
    best, best_id = None, None
    for record in experiments:
        if record["status"] == "keep":
            incumbent, incumbent_id = dict(record["params"]), record["id"]
        bpb = record.get("val_bpb")
        if record["status"] == "keep" and isinstance(bpb, float) and (best is None or bpb < best):
            best, best_id = bpb, record["id"]
    adjusted = [e["after"] for e in events if e.get("kind") == "adjust" and e.get("applied") and "after" in e]
    return {
        "iteration": len(experiments),
        "stop_at": stop_at,
        "experiments": experiments,
        "incumbent": incumbent,
        "incumbent_id": incumbent_id,
        "best_bpb": best,
        "best_id": best_id,
        "batch": [],
        "outcomes": [],
        "settings": dict(adjusted[-1]) if adjusted else dict(DEFAULT_SETTINGS),
        "mechanisms": {},
        "stop_reason": None,
    }


def segments_from(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The recorded segment records (what `compare` reads), each once."""
    seen: dict[Any, dict[str, Any]] = {}
    for event in events:
        if event.get("kind") == "segment_end":
            seen.setdefault(event.get("event_id"), {k: v for k, v in event.items() if k not in LEDGER_FIELDS})
    return list(seen.values())


def next_cycle(events: list[dict[str, Any]]) -> int:
    """A cycle number no recorded segment used (segment events are keyed by it, so reusing one would hide them)."""
    cycles = [int(e["cycle"]) for e in events if e.get("kind") in ("segment_start", "segment_end") and "cycle" in e]
    return max(cycles, default=-1) + 1


def set_aside_undecided(run_dir: Path, decided: int, folder: Path) -> list[str]:
    """Move experiment folders from e{decided:04d} on into `folder` (proposed or trained, never decided)."""
    moved = []
    root = Path(run_dir) / "experiments"
    for path in sorted(root.glob("e[0-9][0-9][0-9][0-9]*")) if root.exists() else []:
        if path.is_dir() and path.name[1:].isdigit() and int(path.name[1:]) >= decided:
            folder.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), folder / path.name)
            moved.append(path.name)
    return moved
