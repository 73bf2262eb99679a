"""trace.jsonl read back while a run may be writing it: a line that is not (yet) valid JSON is skipped and counted
(the writer appends whole lines, so only the last line can be torn), and a trace read once is kept until the file
changes."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dashboard.folders import Folder, Unreadable

TRACE = "trace.jsonl"
CACHED = 64  # traces kept parsed (an ablation of 60 runs fits)


@dataclass
class Trace:
    events: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0  # lines that were not a JSON object
    torn_tail: bool = False  # the last line has no newline yet: a writer is in the middle of it
    missing: bool = False

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("kind") == kind]


_cache: dict[Path, tuple[tuple[Any, ...], Trace]] = {}
_lock = threading.Lock()


def mapping(value: Any) -> dict[str, Any]:
    """A nested record of an event or a JSON file; {} for anything that is not an object."""
    return value if isinstance(value, dict) else {}


def number(value: Any) -> float:
    """A count or a duration recorded in an event; 0 for anything that is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value or abs(value) == float("inf"):
        return 0.0
    return float(value)


def parse(text: str) -> Trace:
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


def read_trace(folder: Folder) -> Trace:
    """The events of the folder's trace.jsonl (an empty Trace marked missing when there is none)."""
    if not folder.is_file(TRACE):
        return Trace(missing=True)
    path = folder.resolve(TRACE)
    signature = folder.signature(TRACE)
    with _lock:
        hit = _cache.get(path)
        if hit and hit[0] == signature:
            return hit[1]
    try:
        trace = parse(folder.read_text(TRACE))
    except (FileNotFoundError, Unreadable):
        return Trace(missing=True)
    with _lock:
        if len(_cache) >= CACHED:
            _cache.pop(next(iter(_cache)))
        _cache[path] = (signature, trace)
    return trace
