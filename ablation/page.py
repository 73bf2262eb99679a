"""`ablation page FILE.md`: regenerate a results page's tables from the folders they were measured in.

A table's place in the page is a pair of comments that name its kind and its source:

    <!-- table main docs/results/ablation-surrogate-20 -->
    (replaced)
    <!-- /table -->

Kinds: `main`, `confirmed`, `baselines`, `cost`, `sources`, `mechanisms` (an ablation's tables, from the
`figures.json` that `ablation report` writes: the source is the ablation folder or the report folder holding it),
`bbob` (a BBOB folder's `bbob.json`) and `imp` (an `imp.json`, or the ablation folder whose report/ holds one). A
source path is relative to the current directory (the repository root). Everything between the two comments is
replaced; the page's own text around them is left as it is. `--check` changes nothing and exits 1 when the page
is out of date.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ablation import bbob, imp, report
from checkpoints.run_folder import write_atomic

OPEN = re.compile(r"^<!-- table (?P<kind>[a-z]+) (?P<source>\S+) -->$")
CLOSE = "<!-- /table -->"


class PageError(ValueError):
    """The page or one of its sources cannot be read as the markers say; nothing was written."""


def _figures(source: Path, name: str, nested: str | None = None) -> dict[str, Any]:
    """The JSON object `name` in `source` (or in its `nested` folder), or `source` itself when it is that file."""
    candidates = [source / name, *([source / nested / name] if nested else []), source]
    for path in candidates:
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                raise PageError(f"{path}: not readable as JSON ({e})") from e
            if not isinstance(data, dict):
                raise PageError(f"{path}: a JSON {type(data).__name__}, not an object")
            return data
    where = f" or in {nested}/" if nested else ""
    raise PageError(f"{source}: no {name} there{where} (run the command that measures it first)")


def _table_lines(markdown: str) -> list[str]:
    """The first table of a rendered markdown document (its contiguous `|` lines)."""
    lines = markdown.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("|")), None)
    if start is None:
        return []
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return lines[start:end]


def _ablation(render: Callable[[dict[str, Any]], list[str]]) -> Callable[[Path], list[str]]:
    def table(source: Path) -> list[str]:
        figures = _figures(source, "figures.json", "report")
        if "analysis" not in figures:
            raise PageError(f"{source}: figures.json holds no analysis (not an ablation report)")
        return _table_lines("\n".join(render(figures["analysis"])))

    return table


KINDS: dict[str, Callable[[Path], list[str]]] = {
    "main": _ablation(report.main_table),
    "confirmed": _ablation(report.confirmed_lines),
    "baselines": _ablation(report.baseline_lines),
    "cost": _ablation(report.cost_table),
    "sources": _ablation(report.source_lines),
    "mechanisms": _ablation(report.mechanism_lines),
    "bbob": lambda source: _table_lines(bbob.table(_figures(source, "bbob.json"))),
    "imp": lambda source: _table_lines(imp.table(_figures(source, "imp.json", "report"))),
}


def render(text: str, root: Path = Path(".")) -> str:
    """The page with every marked table regenerated from its source."""
    out: list[str] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        match = OPEN.match(line.strip())
        if match is None:
            if line.strip().startswith("<!-- table"):
                raise PageError(f"line {i}: a table marker must read `<!-- table KIND SOURCE -->`: {line.strip()!r}")
            continue
        kind, source = match["kind"], match["source"]
        if kind not in KINDS:
            raise PageError(f"line {i}: unknown table kind {kind!r} (one of {', '.join(KINDS)})")
        end = next((j for j in range(i, len(lines)) if lines[j].strip() == CLOSE), None)
        if end is None or any(OPEN.match(lines[j].strip()) for j in range(i, end)):
            raise PageError(f"line {i}: the table opened here is not closed by {CLOSE!r} before the next one")
        table = KINDS[kind](root / source)
        if not table:
            raise PageError(f"line {i}: {source} gives no {kind} table")
        out.extend(table)
        out.append(CLOSE)
        i = end + 1
    return "\n".join(out)


def refresh(page: Path, check: bool = False, root: Path = Path(".")) -> bool:
    """Regenerate `page` in place (atomically); True when it changed (with `check`, would change: nothing written)."""
    text = page.read_text()
    new = render(text, root)
    if new != text and not check:
        write_atomic(page, new)
    return new != text
