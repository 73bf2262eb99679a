"""Statistics of the inner loop's trace that the outer steps read: per parameter, and per segment."""

from __future__ import annotations

from collections import defaultdict
from typing import Any


def parameter_stats(experiments: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per parameter: how often it was changed, kept, crashed, and the mean change of val_bpb it brought."""
    stats: dict[str, dict[str, Any]] = defaultdict(lambda: {"tried": 0, "kept": 0, "crashed": 0, "effects": []})
    best: float | None = None
    for e in experiments:
        bpb = e.get("val_bpb")
        for name in e.get("changes", {}):
            s = stats[name]
            s["tried"] += 1
            s["kept"] += e["status"] == "keep"
            s["crashed"] += e["status"] == "crash"
            if best is not None and isinstance(bpb, float):
                s["effects"].append(bpb - best)
        if e["status"] != "crash" and isinstance(bpb, float) and (best is None or bpb < best):
            best = bpb
    return {
        name: {
            "tried": s["tried"],
            "kept": s["kept"],
            "crashed": s["crashed"],
            "mean_effect": round(sum(s["effects"]) / len(s["effects"]), 6) if s["effects"] else None,
        }
        for name, s in stats.items()
    }


def best_before(experiments: list[dict[str, Any]], iteration: int) -> float | None:
    values = [
        e["val_bpb"]
        for e in experiments
        if e["iteration"] < iteration and e["status"] != "crash" and isinstance(e.get("val_bpb"), float)
    ]
    return min(values) if values else None


def segment_record(
    experiments: list[dict[str, Any]], index: int, mechanism: str, first: int, last: int
) -> dict[str, Any]:
    before, after = best_before(experiments, first), best_before(experiments, last)
    inside = [e for e in experiments if first <= e["iteration"] < last]
    progress = (before - after) if before is not None and after is not None else 0.0
    return {
        "index": index,
        "mechanism": mechanism,
        "first": first,
        "last": last,
        "best_before": before,
        "best_after": after,
        "progress": round(progress, 6),
        "kept": sum(e["status"] == "keep" for e in inside),
        "crashes": sum(e["status"] == "crash" for e in inside),
    }


def repeated_proposals(experiments: list[dict[str, Any]]) -> int:
    """How many experiments tried a configuration that had been tried before (a sign of a deterministic rut)."""
    seen: set[str] = set()
    repeats = 0
    for e in experiments:
        key = repr(sorted(e.get("params", {}).items()))
        repeats += key in seen
        seen.add(key)
    return repeats
