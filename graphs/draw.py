"""`python -m graphs.bilevel draw`: both graphs as Mermaid (xray), and as PNG where graphviz is installed."""

from __future__ import annotations

import argparse
from pathlib import Path

from graphs.inner import build_inner_graph
from graphs.outer import build_outer_graph
from nodes.mechanism_loader import builtin_mechanism


def mermaid_texts() -> dict[str, str]:
    inner = build_inner_graph(builtin_mechanism("llm_greedy")).compile(name="inner")
    outer = build_outer_graph().compile(name="bilevel")
    return {"inner": inner.get_graph().draw_mermaid(), "outer": outer.get_graph(xray=True).draw_mermaid()}


def main_draw(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m graphs.bilevel draw")
    ap.add_argument("--out", type=Path, default=Path("docs/graphs"))
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in mermaid_texts().items():
        (args.out / f"{name}.mmd").write_text(text)
        print(f"--- {name} ---\n{text}")
    try:
        inner = build_inner_graph(builtin_mechanism("llm_greedy")).compile(name="inner")
        inner.get_graph().draw_png(str(args.out / "inner.png"))
        build_outer_graph().compile(name="bilevel").get_graph().draw_png(str(args.out / "outer.png"))
        print(f"PNG written to {args.out}")
    except ImportError:
        print("PNG skipped: install Debian graphviz and pygraphviz to draw PNGs (Mermaid written)")
    return 0
