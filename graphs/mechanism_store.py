"""`python -m graphs.bilevel mechanisms [RUN] [--show ID]`: the built-ins, and the mechanisms a run generated or
composed, with their provenance (diagnosis, validation, measured effect). Any of them can start a new run:
`--mechanism NAME` for a built-in, `--mechanism RUN/mechanisms/ID/source.py` for a generated one."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table

from mechanisms.base import builtin_catalog

console = Console()


def run_mechanisms(run_dir: Path) -> list[dict]:
    rows = []
    for folder in sorted((run_dir / "mechanisms").glob("*/")):
        record = _read(folder / "record.json")
        if record:
            rows.append(
                {
                    "folder": folder,
                    "record": record,
                    "validation": _read(folder / "validation.json"),
                    "effect": _read(folder / "effect.json"),
                    "diagnosis": _read(folder / "diagnosis.json"),
                }
            )
    return rows


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def main_mechanisms(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m graphs.bilevel mechanisms")
    ap.add_argument("run_dir", nargs="?", type=Path)
    ap.add_argument("--show", help="print one mechanism's source and provenance")
    args = ap.parse_args(argv)
    table = Table(title="built-in mechanisms")
    for col in ("name", "target", "summary"):
        table.add_column(col)
    for entry in builtin_catalog():
        table.add_row(entry["name"], entry["target"], entry["summary"])
    console.print(table)
    if args.run_dir is None:
        return 0
    rows = run_mechanisms(args.run_dir)
    table = Table(title=f"mechanisms of {args.run_dir}")
    for col in ("id", "origin", "validated", "effect", "source"):
        table.add_column(col)
    for row in rows:
        effect = row["effect"].get("event", "not yet compared") if row["effect"] else "not yet compared"
        table.add_row(
            row["record"]["id"],
            row["record"]["origin"],
            str(row["validation"].get("ok")),
            effect,
            str(row["folder"] / "source.py"),
        )
    console.print(table)
    for row in rows:
        if args.show and row["record"]["id"] == args.show:
            console.print(Syntax((row["folder"] / "source.py").read_text(), "python"))
            console.print_json(data={k: row[k] for k in ("diagnosis", "validation", "effect")})
    return 0
