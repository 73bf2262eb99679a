"""trace.jsonl read back while a run may be writing it, through the guarded folder reader: the lines are parsed by the
one trace reader (checkpoints/trace.py: a line that is not (yet) valid JSON is skipped and counted), and a trace read
once is kept until the file changes."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from checkpoints.trace import TRACE, Trace, parse
from dashboard.folders import Folder, Unreadable

__all__ = ["TRACE", "Trace", "mapping", "number", "parse", "read_trace"]
CACHED = 64  # traces kept parsed (an ablation of 60 runs fits)


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
