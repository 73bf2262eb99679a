"""The LLM calls of a run from its `llm_call` events: tokens, latency, refused answers and recorded fallbacks, per
node that asked."""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from dashboard.trace import Trace, mapping, number

FALLBACK_NODE = {"proposal_fallback": "propose", "analyze": "analyze", "generate": "generate", "adjust": "adjust"}


def node_of(event: dict[str, Any]) -> str:
    """The graph node an LLM call belongs to: a mechanism's asks (`mechanism:NAME`) are the propose node's."""
    node = str(event.get("node") or "?")
    return "propose" if node.startswith("mechanism:") else node


def is_fallback(event: dict[str, Any]) -> bool:
    kind = event.get("kind")
    if kind == "proposal_fallback":
        return True
    if kind == "analyze":
        return mapping(event.get("diagnosis")).get("source") == "fallback"
    if kind == "adjust" and not event.get("applied") and "fallback" in str(event.get("note") or ""):
        return True
    return kind in FALLBACK_NODE and event.get("source") == "fallback"


def per_node(trace: Trace) -> list[dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = defaultdict(
        lambda: {
            "calls": 0,
            "ok": 0,
            "failed": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "latency": [],
            "fallbacks": 0,
            "levels": set(),
            "models": set(),
        }
    )
    for e in trace.of("llm_call"):
        row = rows[node_of(e)]
        row["calls"] += 1
        row["ok" if e.get("ok") else "failed"] += 1
        row["prompt_tokens"] += int(number(e.get("prompt_tokens")))
        row["completion_tokens"] += int(number(e.get("completion_tokens")))
        row["latency"].append(number(e.get("latency_s")))
        row["levels"].add(str(e.get("level") or "?"))
        row["models"].add(str(e.get("model") or "?"))
    for e in trace.events:
        if is_fallback(e):
            rows[FALLBACK_NODE[str(e.get("kind"))]]["fallbacks"] += 1
    out = []
    for node, row in sorted(rows.items()):
        latency = row.pop("latency")
        out.append(
            {
                "node": node,
                **row,
                "levels": ", ".join(sorted(row["levels"])) or "—",
                "models": ", ".join(sorted(row["models"])) or "—",
                "latency_total": sum(latency),
                "latency_median": statistics.median(latency) if latency else None,
                "latency_max": max(latency) if latency else None,
            }
        )
    return out


def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        key: sum(r[key] for r in rows)
        for key in ("calls", "ok", "failed", "prompt_tokens", "completion_tokens", "fallbacks", "latency_total")
    }


def failures(trace: Trace, limit: int = 200) -> list[dict[str, Any]]:
    """The refused answers and endpoint errors, newest first."""
    failed = [e for e in trace.of("llm_call") if not e.get("ok")]
    return list(reversed(failed))[:limit]


def calls(trace: Trace) -> list[dict[str, Any]]:
    """Every call in order with its node, for the latency chart."""
    return [{**e, "node_name": node_of(e)} for e in trace.of("llm_call")]
