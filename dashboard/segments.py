"""The outer loop's story in a run's trace: the segments (which experiments each ran, under which mechanism) and,
per mechanism, its calls, the segments it ran, the outer loop's decisions about it, and which one is active now."""

from __future__ import annotations

from typing import Any

from dashboard.trace import Trace, number


def segments_of(trace: Trace) -> list[dict[str, Any]]:
    """Segments in order: start and end events merged by cycle; an open one (no end yet) has `open` set."""
    by_cycle: dict[str, dict[str, Any]] = {}
    for e in trace.events:
        cycle = e.get("cycle", e.get("index"))
        if e.get("kind") == "segment_start":
            by_cycle.setdefault(repr(cycle), {"cycle": cycle, "open": True, **_segment_fields(e)})
        elif e.get("kind") == "segment_end":
            by_cycle.setdefault(repr(cycle), {"cycle": cycle}).update({**_segment_fields(e), "open": False})
    return list(by_cycle.values())


def _segment_fields(e: dict[str, Any]) -> dict[str, Any]:
    keys = ("first", "last", "mechanism", "progress", "best_before", "best_after", "kept", "crashes")
    fields = {k: e[k] for k in keys if k in e}
    if not isinstance(fields.get("mechanism", ""), str):
        fields["mechanism"] = str(fields["mechanism"])
    return fields


def segment_span(segment: dict[str, Any], open_end: int) -> tuple[int, int] | None:
    """(first, end) experiments of a segment, end exclusive; an open segment runs to `open_end`."""
    first, last = segment.get("first"), segment.get("last")
    if not isinstance(first, int):
        return None
    return first, max(first, last if isinstance(last, int) else open_end)


def mechanism_use(trace: Trace, segments: list[dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], str | None]:
    """Per mechanism: calls, failures, LLM asks, iterations, segments, the outer decisions about it; and the one
    that is active now (the last segment's, or the one injected since)."""
    use: dict[str, dict[str, Any]] = {}

    def entry(mid: str) -> dict[str, Any]:
        return use.setdefault(
            mid,
            {
                "id": mid,
                "calls": 0,
                "failed": 0,
                "llm_asks": 0,
                "changed": 0,
                "seconds": 0.0,
                "origin": "",
                "iterations": [],
                "segments": [],
                "decisions": [],
                "verdict": "start",
                "kept": 0,
                "rolled_back": 0,
            },
        )

    active: str | None = None
    last_called: str | None = None  # a run of the inner loop alone has no segments: its mechanism is the one called
    replaced: dict[str, str] = {}
    for e in trace.events:
        kind, mid = e.get("kind"), e.get("mechanism")
        if not isinstance(mid, str) or mid == "baseline":
            continue
        if kind == "mechanism_call":
            last_called = mid
            u = entry(mid)
            u["calls"] += 1
            u["failed"] += not e.get("ok", False)
            u["llm_asks"] += int(number(e.get("llm_asks")))
            u["changed"] += bool(e.get("changed_llm_proposal"))
            u["seconds"] += number(e.get("seconds"))
            u["origin"] = e.get("origin") or u["origin"]
            if e.get("iteration") is not None and e["iteration"] not in u["iterations"]:
                u["iterations"].append(e["iteration"])
        elif kind == "segment_start":
            active = mid
            entry(mid)
        elif kind == "inject":
            u = entry(mid)
            u["origin"] = e.get("origin") or u["origin"]
            u["decisions"].append(e)
            u["verdict"] = "on trial" if e.get("injected") else "refused"
            if e.get("injected"):
                replaced[mid] = str(e.get("replaces") or "")
                active = mid
        elif kind == "compare":
            u = entry(mid)
            u["decisions"].append(e)
            u["verdict"] = "kept" if e.get("event") == "kept" else "rolled back"
            u["kept" if e.get("event") == "kept" else "rolled_back"] += 1
            if e.get("event") != "kept" and replaced.get(mid):
                active = replaced[mid]
        elif kind == "validate":
            u = entry(mid)
            u["decisions"].append(e)
            if not e.get("ok"):
                u["verdict"] = "invalid"
    for s in segments:
        if isinstance(s.get("mechanism"), str):
            entry(s["mechanism"])["segments"].append(s.get("cycle"))
    return use, active or last_called
