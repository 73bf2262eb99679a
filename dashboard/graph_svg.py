"""The inner and outer graphs as SVG, from the compiled LangGraph graphs themselves (their nodes and edges; the
Mermaid text of `graphs.draw` is shown beside them). Layout: the nodes in a row in the order a walk from START
reaches them; the edge to the next node is a straight arrow, a forward jump an arc above, a loop back an arc
below; conditional edges are dashed. A node can carry a badge (the active mechanism on `propose`) and be marked as
the step that ran last."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from dashboard.svg import esc, open_svg

START, END = "__start__", "__end__"
NODE_W, NODE_H, GAP = 96, 38, 34
BADGE_ROW = 24


@dataclass(frozen=True)
class Topology:
    name: str
    nodes: tuple[str, ...]
    edges: tuple[tuple[str, str, bool], ...]  # source, target, conditional
    mermaid: str


@functools.cache
def topologies() -> dict[str, Topology] | str:
    """Both graphs, built once; a string saying why when the project's graphs cannot be built here."""
    try:
        from graphs.draw import mermaid_texts
        from graphs.inner import build_inner_graph
        from graphs.outer import build_outer_graph
        from nodes.mechanism_loader import builtin_mechanism

        inner = build_inner_graph(builtin_mechanism("llm_greedy")).compile(name="inner").get_graph()
        outer = build_outer_graph().compile(name="bilevel").get_graph(xray=True)
        texts = mermaid_texts()
    except Exception as e:  # an import or build failure is shown on the page, not raised into it
        return f"the graphs could not be built: {type(e).__name__}: {e}"
    return {"inner": _topology("inner", inner, texts["inner"]), "outer": _topology("outer", outer, texts["outer"])}


def _topology(name: str, graph: Any, mermaid: str) -> Topology:
    edges = tuple((e.source, e.target, bool(e.conditional)) for e in graph.edges)
    return Topology(name, order(list(graph.nodes), edges), edges, mermaid)


def order(nodes: list[str], edges: tuple[tuple[str, str, bool], ...]) -> tuple[str, ...]:
    """Nodes in the order a depth-first walk from START first reaches them, END last."""
    seen: list[str] = []

    def visit(node: str) -> None:
        if node in seen or node == END:
            return
        seen.append(node)
        for source, target, _ in edges:
            if source == node:
                visit(target)

    visit(START)
    rest = [n for n in nodes if n not in seen and n != END]
    return tuple(seen + rest + ([END] if END in nodes else []))


def label(node: str) -> str:
    return {START: "START", END: "END"}.get(node, node)


def draw(top: Topology, *, badges: dict[str, str] | None = None, current: str | None = None) -> str:
    badges = badges or {}
    xs = {n: 16 + i * (NODE_W + GAP) for i, n in enumerate(top.nodes)}
    width = 32 + len(top.nodes) * (NODE_W + GAP) - GAP
    index = {n: i for i, n in enumerate(top.nodes)}
    jumps = [abs(index[t] - index[s]) for s, t, _ in top.edges if s in index and t in index]
    arc = 8 + lift(max([j for j in jumps if j > 1] or [1]))
    mid = 12 + arc + (BADGE_ROW if badges else 0)  # a badge has its own row above the arcs
    height = mid + NODE_H + arc + 10
    parts = [open_svg(width, height, f"graph graph-{top.name}", f"the {top.name} graph")]
    parts.append(
        f'<defs><marker id="arrow-{top.name}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path class="arrowhead" d="M0,0L10,5L0,10z"/></marker></defs>'
    )
    for source, target, conditional in top.edges:
        if source in xs and target in xs:
            parts.append(edge(xs[source], xs[target], mid, conditional, top.name, f"{label(source)} → {label(target)}"))
    for node in top.nodes:
        parts.append(box(node, xs[node], mid, badges.get(node), node == current))
    parts.append("</svg>")
    return "".join(parts)


def lift(span: int) -> int:
    """How far an arc over `span` nodes bows out: wider arcs higher, so they do not overlap, up to a limit."""
    return 20 + 10 * min(span, 5)


def edge(x_from: int, x_to: int, mid: int, conditional: bool, graph: str, title: str) -> str:
    css = "edge conditional" if conditional else "edge"
    marker = f'marker-end="url(#arrow-{graph})"'
    if x_to == x_from + NODE_W + GAP:
        y = mid + NODE_H / 2
        return (
            f'<path class="{css}" d="M{x_from + NODE_W},{y}L{x_to - 2},{y}" {marker}><title>{esc(title)}</title></path>'
        )
    height = lift(abs(x_to - x_from) // (NODE_W + GAP))
    if x_to > x_from:  # a jump forward: over the top
        a, b, y = x_from + NODE_W * 0.7, x_to + NODE_W * 0.3, mid
        d = f"M{a},{y}C{a},{y - height} {b},{y - height} {b},{y - 2}"
    else:  # a loop back: underneath
        a, b, y = x_from + NODE_W * 0.3, x_to + NODE_W * 0.7, mid + NODE_H
        d = f"M{a},{y}C{a},{y + height} {b},{y + height} {b},{y + 2}"
    return f'<path class="{css}" d="{d}" {marker}><title>{esc(title)}</title></path>'


def box(node: str, x: int, mid: int, badge: str | None, current: bool) -> str:
    terminal = node in (START, END)
    css = "node terminal" if terminal else "node"
    css += " current" if current else ""
    css += " badged" if badge else ""
    rx = NODE_H / 2 if terminal else 6
    parts = [
        f'<g class="{css}" data-node="{esc(node)}">',
        f'<rect x="{x}" y="{mid}" width="{NODE_W}" height="{NODE_H}" rx="{rx}"/>',
        f'<text x="{x + NODE_W / 2}" y="{mid + NODE_H / 2 + 5}" text-anchor="middle">{esc(label(node))}</text>',
    ]
    if badge:
        cx = x + NODE_W / 2
        parts.append(f'<line class="badge-leader" x1="{cx}" x2="{cx}" y1="{BADGE_ROW - 2}" y2="{mid}"/>')
        parts.append(
            f'<text class="badge" x="{x + NODE_W / 2}" y="{BADGE_ROW - 6}" text-anchor="middle">{esc(badge)}</text>'
        )
    if current:
        parts.append("<title>the step that ran last</title>")
    parts.append("</g>")
    return "".join(parts)
