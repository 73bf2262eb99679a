"""An ablation's charts as SVG: each group's Δ val_bpb with its 95 % confidence interval and every run as a dot
(the noise floor's ±1 sd shaded around zero), and each group's mean running-best Δ per experiment with its band."""

from __future__ import annotations

import math
from typing import Any

from dashboard.svg import Scale, esc, open_svg, tag, ticks, x_axis, y_axis
from dashboard.trace import mapping

W = 920
L, R, T, B = 110, 24, 20, 48
GROUP_CLASSES = 6


def _finite(*values: Any) -> list[float]:
    return [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]


def forest(groups: dict[str, dict[str, Any]], runs: list[dict[str, Any]], noise_sd: float | None) -> str:
    names = list(groups)
    if not names:
        return ""
    row = 40
    height = T + row * len(names) + B
    deltas = {g: _finite(*(r.get("delta_bpb") for r in runs if r.get("group") == g)) for g in names}
    every = [v for g in names for v in deltas[g]]
    for g in names:
        d = mapping(mapping(groups[g]).get("delta"))
        every += _finite(d.get("ci_low"), d.get("ci_high"), d.get("mean"))
    every += [0.0] + ([-noise_sd, noise_sd] if noise_sd else [])
    lo, hi = min(every), max(every)
    pad = (hi - lo) * 0.06 or 0.01
    x = Scale(lo - pad, hi + pad, L, W - R)
    parts = [open_svg(W, height, "chart forest", "Δ val_bpb per group with 95% confidence intervals")]
    bottom = T + row * len(names)
    if noise_sd and math.isfinite(noise_sd):
        box = {"class": "noise", "x": x(-noise_sd), "y": T, "width": x(noise_sd) - x(-noise_sd), "height": bottom - T}
        parts.append(tag("rect", box, title=f"noise floor ±1 sd ({noise_sd:.4f})"))
    parts.append(f'<line class="zero" x1="{x(0)}" x2="{x(0)}" y1="{T}" y2="{bottom}"/>')
    for i, g in enumerate(names):
        yy = T + i * row + row / 2
        css = f"grp-{i % GROUP_CLASSES}"
        d = mapping(mapping(groups[g]).get("delta"))
        label = {"class": "row-label", "x": L - 10, "y": yy + 4, "text-anchor": "end"}
        parts.append(tag("text", label, esc(f"{g} (n = {d.get('n', 0)})")))
        for v in deltas[g]:
            dot = {"class": f"run-dot {css}", "cx": x(v), "cy": yy + 9, "r": 3}
            parts.append(tag("circle", dot, title=f"{g}: {v:+.4f}"))
        interval = _finite(d.get("ci_low"), d.get("ci_high"))
        if len(interval) == 2:
            parts.append(
                f'<line class="ci {css}" x1="{x(interval[0])}" x2="{x(interval[1])}" y1="{yy - 3}" y2="{yy - 3}"/>'
            )
        for mean in _finite(d.get("mean")):
            title = f"{g}: mean {mean:+.4f}"
            title += f", 95% CI [{interval[0]:+.4f}, {interval[1]:+.4f}]" if len(interval) == 2 else ""
            square = {"class": f"mean {css}", "x": x(mean) - 5, "y": yy - 8, "width": 10, "height": 10}
            parts.append(tag("rect", square, title=title))
    parts += x_axis(x, ticks(lo - pad, hi + pad, 8), bottom, "Δ val_bpb (best − baseline; left is better)", right=W - R)
    parts.append("</svg>")
    return "".join(parts)


def curves(groups: dict[str, dict[str, Any]]) -> str:
    """Mean running-best Δ per experiment, one line per group, with the bootstrap 95 % band."""
    series: dict[str, dict[str, Any]] = {g: e["curve"] for g, e in groups.items() if isinstance(e.get("curve"), dict)}
    values = [v for c in series.values() for key in ("mean", "low", "high") for v in _finite(*(c.get(key) or []))]
    if not values:
        return ""
    height = 340
    n = max(len(c.get("mean") or []) for c in series.values())
    lo, hi = min(values + [0.0]), max(values + [0.0])
    pad = (hi - lo) * 0.06 or 0.01
    x = Scale(0, max(1, n - 1), L, W - R)
    y = Scale(lo - pad, hi + pad, height - B, T)
    parts = [open_svg(W, height, "chart curves", "mean running-best Δ per group")]
    parts += y_axis(y, ticks(lo - pad, hi + pad), L, W - R, "mean Δ of the running best")
    parts += x_axis(x, [v for v in ticks(0, n - 1, 10) if v == int(v)], height - B, "experiment", right=W - R)
    for i, (g, c) in enumerate(series.items()):
        css = f"grp-{i % GROUP_CLASSES}"
        low, high, mean = c.get("low") or [], c.get("high") or [], c.get("mean") or []
        band = [
            (j, lo_, hi_)
            for j, (lo_, hi_) in enumerate(zip(low, high, strict=False))
            if _finite(lo_, hi_) and len(_finite(lo_, hi_)) == 2
        ]
        if band:
            upper = " ".join(f"{x(j)},{y(h)}" for j, _, h in band)
            lower = " ".join(f"{x(j)},{y(lo_)}" for j, lo_, _ in reversed(band))
            parts.append(f'<polygon class="band {css}" points="{upper} {lower}"/>')
        line = " ".join(f"{x(j)},{y(v)}" for j, v in enumerate(mean) if _finite(v))
        parts.append(f'<polyline class="curve {css}" points="{line}"><title>{esc(g)}</title></polyline>')
        last = [(j, v) for j, v in enumerate(mean) if _finite(v)]
        if last:
            end = {
                "class": f"curve-label {css}",
                "x": x(last[-1][0]) - 4,
                "y": y(last[-1][1]) - 6,
                "text-anchor": "end",
            }
            parts.append(tag("text", end, esc(g)))
    parts.append("</svg>")
    return "".join(parts)
