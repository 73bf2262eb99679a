"""The running-best staircase of a run as SVG: every experiment a point (kept filled, discarded hollow, crashes as
crosses on the top edge, outliers as triangles there), coloured by where its proposal came from (model, fallback,
mechanism); the mechanism segments shaded; the baseline and the noise floor drawn; experiments in flight dashed."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from checkpoints.trace import position
from dashboard.run_folder import RunData, bpb, running_best
from dashboard.segments import segment_span
from dashboard.svg import Scale, esc, open_svg, ticks, x_axis, y_axis

W, H = 920, 360
L, R, T, B = 72, 16, 34, 48
FAMILY_CLASSES = 6  # .seg-0 .. .seg-5 in the stylesheet


def family(mechanism_id: str | None) -> str:
    return str(mechanism_id or "?").split("@", 1)[0]


def family_class(name: str, order: list[str]) -> str:
    if name not in order:
        order.append(name)
    return f"seg-{order.index(name) % FAMILY_CLASSES}"


def y_range(
    values: list[float], baseline: float | None, noise: tuple[float, float] | None
) -> tuple[float, float, float]:
    """(low, high, clip): the view of val_bpb; points above `clip` are drawn on the top edge as outliers."""
    lows = values + ([baseline] if baseline is not None else []) + ([noise[0]] if noise else [])
    highs = values + ([baseline] if baseline is not None else []) + ([noise[1]] if noise else [])
    if not lows:  # every experiment crashed, the baseline too: nothing to scale by
        return 0.0, 1.0, 1.0
    lo, hi = min(lows), max(highs)
    if baseline is not None:
        best = min(values) if values else baseline
        clip = baseline + max(3 * (baseline - best), 0.05 * abs(baseline), 1e-6)
        hi = min(hi, clip)
    else:
        clip = hi
    pad = (hi - lo) * 0.08 or 0.01
    return lo - pad, hi + pad, clip


def noise_band(run: RunData) -> tuple[tuple[float, float] | None, str]:
    if run.noise:
        mean, sd = run.noise["mean"], run.noise["sd"]
        return (mean - sd, mean + sd), f"noise floor: the baseline re-trained {run.noise['n']}×, mean ± 1 sd"
    margin = run.config.get("noise_margin")
    if isinstance(margin, int | float) and margin > 0 and run.baseline is not None:
        return (run.baseline - margin, run.baseline), f"noise margin {margin:g} below the baseline (run setting)"
    return None, "no noise floor measured for this run (an ablation measures one)"


def staircase(run: RunData, *, link: Callable[[str], str], y_view: tuple[float, float] | None = None) -> str:
    """The running-best chart of a run. `y_view` fixes the val_bpb range (two runs side by side share one)."""
    records = run.experiments
    values = [v for e in records if e.get("status") != "crash" and (v := bpb(e)) is not None]
    band, _ = noise_band(run)
    if not records:
        return (
            open_svg(W, 80, "chart staircase empty", "no experiments yet")
            + '<text class="empty" x="20" y="45">no experiment decided yet</text></svg>'
        )
    lo, hi, clip = y_range(values, run.baseline, band)
    if y_view:
        lo, hi, clip = y_view[0], y_view[1], y_view[1]
    n = max(len(records) + len(run.pending), run.planned or 0)
    x = Scale(-0.5, n - 0.5, L, W - R)
    y = Scale(lo, hi, H - B, T)
    parts = [open_svg(W, H, "chart staircase", f"running best of {run.folder.name}")]
    order: list[str] = []
    for s in run.segments:
        span = segment_span(s, len(records) + len(run.pending))
        if span is None:
            continue
        x0, x1 = x(span[0] - 0.5), x(span[1] - 0.5)
        name = family(s.get("mechanism"))
        css = family_class(name, order)
        parts.append(
            f'<rect class="segment {css}" x="{x0}" y="{T}" width="{max(0.0, x1 - x0)}" height="{H - B - T}">'
            f"<title>segment {esc(s.get('cycle'))}: {esc(s.get('mechanism'))}</title></rect>"
        )
        parts.append(f'<text class="segment-label" x="{x0 + 4}" y="{T - 8}">{esc(name)}</text>')
    parts += y_axis(y, ticks(lo, hi), L, W - R, "val_bpb (lower is better)")
    parts += x_axis(x, [v for v in ticks(0, n - 1, 10) if v == int(v)], H - B, "experiment", right=W - R)
    if band:
        top, bottom = y(min(band[1], hi)), y(max(band[0], lo))
        parts.append(f'<rect class="noise" x="{L}" y="{top}" width="{W - R - L}" height="{max(0.0, bottom - top)}"/>')
    if run.baseline is not None and lo <= run.baseline <= hi:
        parts.append(f'<line class="baseline" x1="{L}" x2="{W - R}" y1="{y(run.baseline)}" y2="{y(run.baseline)}"/>')
        parts.append(f'<text class="baseline-label" x="{L + 4}" y="{y(run.baseline) - 5}">baseline</text>')
    parts.append(step_path(records, x, y, lo, hi))
    for e in records:
        if position(e) < math.inf:  # a record without an iteration has no place on the axis (the table lists it)
            parts.append(point(e, x, y, clip, lo, hi, link))
    for e in run.pending:
        if isinstance(e.get("iteration"), int):
            px = x(e["iteration"])
            parts.append(
                f'<line class="pending" x1="{px}" x2="{px}" y1="{T}" y2="{H - B}"><title>{esc(e["id"])}: '
                f"{esc(e.get('status'))}</title></line>"
            )
    parts.append("</svg>")
    return "".join(parts)


def step_path(records: list[dict[str, Any]], x: Scale, y: Scale, lo: float, hi: float) -> str:
    points: list[str] = []
    previous: float | None = None
    for i, best in enumerate(running_best(records)):
        if best is None:
            continue
        clamped = min(max(best, lo), hi)
        if previous is not None:
            points.append(f"{x(i)},{y(previous)}")
        points.append(f"{x(i)},{y(clamped)}")
        previous = clamped
    if previous is not None:
        points.append(f"{x(len(records) - 0.5)},{y(previous)}")
    return (
        f'<polyline class="best" points="{" ".join(points)}"><title>running best</title></polyline>' if points else ""
    )


def point(e: dict[str, Any], x: Scale, y: Scale, clip: float, lo: float, hi: float, link: Callable[[str], str]) -> str:
    status, source = str(e.get("status")), str(e.get("proposal_source") or e.get("source") or "unknown")
    value = bpb(e)
    title = f"{e.get('id')} {status} {'' if value is None else f'{value:.6f}'} · {source} · {e.get('description', '')}"
    css = f"pt st-{esc(status)} src-{esc(source)}"
    px = x(position(e))
    anchor = f'<a href="{esc(link(str(e.get("id"))))}" data-id="{esc(e.get("id"))}">'
    if status == "crash" or value is None:
        py = y(hi) + 6
        shape = f'<path class="{css}" d="M{px - 5},{py - 5}L{px + 5},{py + 5}M{px - 5},{py + 5}L{px + 5},{py - 5}"/>'
    elif value > clip or value > hi:
        py = y(hi) + 6
        shape = f'<path class="{css} outlier" d="M{px},{py - 6}L{px + 5},{py + 3}L{px - 5},{py + 3}Z"/>'
    else:
        shape = f'<circle class="{css}" cx="{px}" cy="{y(max(value, lo))}" r="{6 if status == "keep" else 4.5}"/>'
    return f"{anchor}{shape}<title>{esc(title)}</title></a>"


def shared_view(runs: list[RunData]) -> tuple[float, float]:
    """One val_bpb range for runs drawn side by side."""
    views = []
    for run in runs:
        values = [v for e in run.experiments if e.get("status") != "crash" and (v := bpb(e)) is not None]
        if values:
            lo, hi, _ = y_range(values, run.baseline, noise_band(run)[0])
            views.append((lo, hi))
    if not views:
        return 0.0, 1.0
    return min(v[0] for v in views), max(v[1] for v in views)


def running_best_before(records: list[dict[str, Any]], record: dict[str, Any]) -> float | None:
    """The best val_bpb before this experiment (what it had to beat)."""
    before = [e for e in records if position(e) < position(record)]
    best = running_best(before)
    return best[-1] if best else None
