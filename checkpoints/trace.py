"""trace.jsonl read back: the one reader of a run's events and of the experiments they record.

The run folder's ledger (checkpoints/run_folder.py) appends whole lines, so only the last one can be torn (a kill -9
during a write, or a write still in progress when a reader looks): a line that is not a JSON object is skipped and
counted, never raised. `decide` records each experiment once (event id `<id>:decide`); should a second record of the
same id reach the trace, the first stands — it is the one the run's state went on from. Every reader of the
experiments of a run (the report, the ablation's collection, the dashboard, the rebuild from the ledger) takes them
from `experiments` here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TRACE = "trace.jsonl"


@dataclass
class Trace:
    events: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0  # lines that were not a JSON object
    torn_tail: bool = False  # the last line has no newline yet: a writer is in the middle of it
    missing: bool = False  # there is no trace.jsonl

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("kind") == kind]


def parse(text: str) -> Trace:
    """The events of a trace's text, in order."""
    trace = Trace(torn_tail=bool(text) and not text.endswith("\n"))
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            trace.skipped += 1
            continue
        if isinstance(event, dict):
            trace.events.append(event)
        else:
            trace.skipped += 1
    return trace


def read(run_dir: Path) -> Trace:
    """The events of `run_dir`'s trace.jsonl (an empty Trace marked missing when there is none)."""
    path = Path(run_dir) / TRACE
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return Trace(missing=True)
    return parse(text)


def position(record: dict[str, Any]) -> float:
    """An experiment's place in the run (its iteration); a record without a usable one goes last."""
    iteration = record.get("iteration")
    return float(iteration) if isinstance(iteration, int) and not isinstance(iteration, bool) else float("inf")


def experiments(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The decided experiments of a run, each once (its first record), in the run's order (iteration, then id); an
    event without a string id is not an experiment record."""
    records: dict[str, dict[str, Any]] = {}
    for event in events:
        if event.get("kind") == "experiment" and isinstance(event.get("id"), str):
            records.setdefault(event["id"], event)
    return sorted(records.values(), key=lambda r: (position(r), r["id"]))
