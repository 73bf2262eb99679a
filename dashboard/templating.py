"""Formatting filters of the templates: numbers with a dash for what is missing, times, JSON."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def bpb(value: Any) -> str:
    v = _number(value)
    return "—" if v is None else f"{v:.6f}"


def delta(value: Any, digits: int = 6) -> str:
    v = _number(value)
    return "—" if v is None else f"{v:+.{digits}f}"


def fixed(value: Any, digits: int = 2) -> str:
    v = _number(value)
    return "—" if v is None else f"{v:.{digits}f}"


def seconds(value: Any) -> str:
    v = _number(value)
    if v is None:
        return "—"
    return f"{v:.2f} s" if v < 10 else f"{v:.1f} s" if v < 600 else f"{v / 60:.1f} min"


def count(value: Any) -> str:
    v = _number(value)
    return "—" if v is None else f"{v:,.0f}"


def when(value: Any) -> str:
    v = _number(value)
    return "—" if v is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v))


def clock(value: Any) -> str:
    v = _number(value)
    return "—" if v is None else time.strftime("%H:%M:%S", time.localtime(v))


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def compact(value: Any, limit: int = 160) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def changes(value: Any) -> str:
    if isinstance(value, dict) and value:
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return "—"


def filters() -> dict[str, Callable[..., str]]:
    return {
        "bpb": bpb,
        "delta": delta,
        "fixed": fixed,
        "seconds": seconds,
        "count": count,
        "when": when,
        "clock": clock,
        "pretty": pretty,
        "compact": compact,
        "changes": changes,
    }
