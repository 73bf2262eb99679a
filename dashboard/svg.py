"""Small helpers for server-rendered SVG: escaping, linear scales, tick values. Colours come from classes that the
dashboard's stylesheet defines, so the SVG carries no inline style (the page's Content-Security-Policy allows
none)."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


@dataclass(frozen=True)
class Scale:
    d0: float
    d1: float
    r0: float
    r1: float

    def __call__(self, value: float) -> float:
        span = self.d1 - self.d0
        t = (value - self.d0) / span if span else 0.5
        return round(self.r0 + t * (self.r1 - self.r0), 2)


def ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else []
    raw = (hi - lo) / max(1, count)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(lo / step) * step
    out = []
    value = first
    while value <= hi + step * 1e-9:
        out.append(0.0 if abs(value) < step * 1e-9 else round(value, 12))
        value += step
    return out


def tick_label(value: float, values: list[float]) -> str:
    step = abs(values[1] - values[0]) if len(values) > 1 else abs(value) or 1.0
    digits = max(0, math.ceil(-math.log10(step)))
    if abs(round(step, digits) - step) > step * 1e-9:
        digits += 1
    return f"{value:.{min(digits, 6)}f}"


def open_svg(width: int, height: int, css: str, label: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" class="{esc(css)}" '
        f'role="img" aria-label="{esc(label)}" preserveAspectRatio="xMinYMin meet">'
    )


def y_axis(scale: Scale, values: list[float], left: float, right: float, title: str) -> list[str]:
    parts = []
    for v in values:
        y = scale(v)
        parts.append(f'<line class="grid" x1="{left}" x2="{right}" y1="{y}" y2="{y}"/>')
        parts.append(f'<text class="tick" x="{left - 6}" y="{y + 4}" text-anchor="end">{tick_label(v, values)}</text>')
    mid = (scale.r0 + scale.r1) / 2
    parts.append(
        f'<text class="axis-title" transform="translate({left - 52},{mid}) rotate(-90)" text-anchor="middle">'
        f"{esc(title)}</text>"
    )
    return parts


def x_axis(scale: Scale, values: list[float], bottom: float, title: str, *, right: float) -> list[str]:
    parts = [f'<line class="axis" x1="{scale.r0}" x2="{right}" y1="{bottom}" y2="{bottom}"/>']
    for v in values:
        x = scale(v)
        parts.append(f'<line class="axis" x1="{x}" x2="{x}" y1="{bottom}" y2="{bottom + 4}"/>')
        parts.append(
            f'<text class="tick" x="{x}" y="{bottom + 16}" text-anchor="middle">{tick_label(v, values)}</text>'
        )
    parts.append(
        f'<text class="axis-title" x="{(scale.r0 + right) / 2}" y="{bottom + 32}" text-anchor="middle">'
        f"{esc(title)}</text>"
    )
    return parts


def tag(name: str, attrs: dict[str, object], body: str = "", title: str | None = None) -> str:
    """One SVG element; attribute values and the title are escaped, `body` is inserted as it is (already SVG)."""
    text = " ".join(f'{k}="{esc(v)}"' for k, v in attrs.items())
    inner = (f"<title>{esc(title)}</title>" if title else "") + body
    return f"<{name} {text}>{inner}</{name}>" if inner else f"<{name} {text}/>"
