"""The run's smaller charts as SVG: the latency of every LLM call, where one experiment's time went, and the
mechanism timeline (segments each mechanism ran, its calls, its verdict)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from dashboard.run_folder import RunData
from dashboard.segments import segment_span
from dashboard.staircase import FAMILY_CLASSES, B, L, R, T, W, family, family_class
from dashboard.svg import Scale, esc, open_svg, tag, ticks, x_axis, y_axis
from dashboard.trace import mapping, number


def latency(calls: list[dict[str, Any]], nodes: list[str]) -> str:
    """Every LLM call's latency in order; refused answers as crosses."""
    if not calls:
        return (
            open_svg(W, 60, "chart latency empty", "no LLM calls")
            + '<text class="empty" x="20" y="35">no LLM call recorded</text></svg>'
        )
    height = 260
    top = max(number(c.get("latency_s")) for c in calls) or 1.0
    x = Scale(-0.5, len(calls) - 0.5, L, W - R)
    y = Scale(0.0, top * 1.08, height - B, 16)
    parts = [open_svg(W, height, "chart latency", "LLM call latency")]
    parts += y_axis(y, ticks(0.0, top * 1.08), L, W - R, "latency (s)")
    parts += x_axis(x, [v for v in ticks(0, len(calls) - 1, 10) if v == int(v)], height - B, "LLM call", right=W - R)
    for i, c in enumerate(calls):
        px, py = x(i), y(number(c.get("latency_s")))
        css = f"node-{nodes.index(c['node_name']) % FAMILY_CLASSES if c['node_name'] in nodes else 0}"
        title = esc(
            f"{c['node_name']} · {c.get('level')} · attempt {c.get('attempt')} · {c.get('latency_s')} s · "
            f"{c.get('prompt_tokens')}+{c.get('completion_tokens')} tokens"
            + ("" if c.get("ok") else f" · refused: {c.get('error')}")
        )
        if c.get("ok"):
            parts.append(f'<circle class="call {css}" cx="{px}" cy="{py}" r="3.5"><title>{title}</title></circle>')
        else:
            d = f"M{px - 4},{py - 4}L{px + 4},{py + 4}M{px - 4},{py + 4}L{px + 4},{py - 4}"
            parts.append(f'<path class="call failed {css}" d="{d}"><title>{title}</title></path>')
    parts.append("</svg>")
    return "".join(parts)


def time_split(split: list[tuple[str, float]]) -> str:
    total = sum(s for _, s in split)
    if total <= 0:
        return ""
    width, height = 920, 54
    parts = [open_svg(width, height, "chart split", "where the experiment's time went")]
    x0 = 0.0
    for i, (name, seconds) in enumerate(split):
        w = (width - 2) * seconds / total
        bar = {
            "class": f"part part-{i % FAMILY_CLASSES}",
            "x": round(x0 + 1, 2),
            "y": 4,
            "width": round(max(w, 0.5), 2),
        }
        parts.append(
            tag("rect", {**bar, "height": 26}, title=f"{name}: {seconds:.2f} s ({100 * seconds / total:.0f} %)")
        )
        if w > 90:
            parts.append(f'<text class="part-label" x="{x0 + 6:.2f}" y="22">{esc(name)} {seconds:.1f} s</text>')
        x0 += w
    parts.append('<text class="tick" x="0" y="48">0 s</text>')
    parts.append(tag("text", {"class": "tick", "x": width, "y": 48, "text-anchor": "end"}, f"{total:.1f} s"))
    parts.append("</svg>")
    return "".join(parts)


def timeline(run: RunData, *, link: Callable[[str], str]) -> str:
    """One row per mechanism: the segments it ran (bars), each call (ticks), the verdict after its trial."""
    mechanisms = [m for m in run.mechanisms.values() if m["segments"] or m["calls"] or m["decisions"]]
    if not mechanisms:
        return ""
    row = 30
    height = T + row * len(mechanisms) + B
    n = max(len(run.experiments) + len(run.pending), run.planned or 0, 1)
    left = 270
    x = Scale(-0.5, n - 0.5, left, W - R)
    parts = [open_svg(W, height, "chart timeline", "mechanism timeline")]
    order: list[str] = []
    by_cycle = {repr(s.get("cycle")): s for s in run.segments}
    for i, m in enumerate(mechanisms):
        yy = T + i * row
        css = family_class(family(m["id"]), order)
        label = f"{m['id']} ({m['verdict']})"
        text = tag("text", {"class": "row-label", "x": left - 8, "y": yy + 19, "text-anchor": "end"}, esc(label))
        parts.append(tag("a", {"href": link(m["id"])}, text))
        for cycle in m["segments"]:
            s = by_cycle.get(repr(cycle), {})
            span = segment_span(s, len(run.experiments) + len(run.pending))
            if span is None:
                continue
            x0, x1 = x(span[0] - 0.5), x(span[1] - 0.5)
            bar = {"class": f"bar {css}", "x": x0, "y": yy + 6, "width": max(1.0, x1 - x0), "height": 18}
            parts.append(tag("rect", bar, title=f"segment {cycle}: experiments {span[0]}–{span[1] - 1}"))
        for it in m["iterations"]:
            if isinstance(it, int):
                parts.append(f'<line class="call-tick" x1="{x(it)}" x2="{x(it)}" y1="{yy + 8}" y2="{yy + 22}"/>')
        for d in m["decisions"]:
            end = mapping(d.get("segment")).get("last") if d.get("kind") == "compare" else None
            if isinstance(end, int):  # the verdict after its trial segment, at the segment's end
                kept = d.get("event") == "kept"
                mark = {"class": f"verdict {'kept' if kept else 'rolled'}", "x": x(end - 0.5), "y": yy + 20}
                parts.append(
                    tag("text", {**mark, "text-anchor": "middle"}, "✓" if kept else "✗", title=d.get("evidence"))
                )
    bottom = T + row * len(mechanisms)
    parts += x_axis(
        x, [v for v in ticks(0, n - 1, 10) if v == int(v) and not math.isnan(v)], bottom, "experiment", right=W - R
    )
    parts.append("</svg>")
    return "".join(parts)
