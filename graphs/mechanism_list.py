"""`python -m graphs.bilevel mechanisms [RUN] [--show ID]`: the built-ins, and every mechanism a run generated or
composed — accepted or refused — with its provenance (source, diagnosis, validation report, measured effect). Any of
them can start a new run: `--mechanism NAME` for a built-in, `--mechanism RUN/mechanisms/ID/source.py` for a
generated one.

Exit codes: 0 shown; 1 no mechanism with that id; 2 not a run folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.padding import Padding
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from mechanisms.base import ALL_BUILTIN_NAMES, builtin_catalog, builtin_source

console = Console()


def run_mechanisms(run_dir: Path) -> list[dict[str, Any]]:
    """Every candidate folder of a run that has a record, in folder order."""
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


def status_of(row: dict[str, Any]) -> str:
    """refused | validated | injected, then kept / rolled_back once compared."""
    if row["effect"].get("event"):
        return str(row["effect"]["event"])
    status = row["record"].get("status")
    if status:
        return str(status)
    return "injected" if row["validation"].get("ok") else "refused"


def reason_of(row: dict[str, Any]) -> str:
    """Why it was refused (the first error), or the measured effect's evidence."""
    if row["effect"].get("evidence"):
        return str(row["effect"]["evidence"])
    validation = row["validation"]
    if validation.get("inject"):
        return str(validation["inject"])
    errors = validation.get("errors") or []
    if not errors:
        return ""
    stage = str(validation.get("stage", "?"))
    return errors[0] if str(errors[0]).startswith(f"{stage}:") else f"{stage}: {errors[0]}"


def find(rows: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    """The row whose id (NAME@hash) or folder name (NAME-hash) is `key`; a unique id prefix also matches."""
    exact = [r for r in rows if key in (r["record"].get("id"), r["folder"].name)]
    if exact:
        return exact[0]
    prefixed = [r for r in rows if str(r["record"].get("id", "")).startswith(key)]
    return prefixed[0] if len(prefixed) == 1 else None


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def print_builtins() -> None:
    table = Table(title="built-in mechanisms")
    table.add_column("name", no_wrap=True)
    table.add_column("target", no_wrap=True)
    table.add_column("summary")
    for entry in builtin_catalog():
        table.add_row(entry["name"], entry["target"], entry["summary"])
    console.print(table)


def print_run(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """One line per candidate (id, origin, status: the id whole, so it can be copied into --show), then why, indented;
    in the order the run made them. Reads at 80 columns."""
    console.print(f"\n[bold]mechanisms of {run_dir}[/] ({len(rows)})", highlight=False)
    for row in sorted(rows, key=lambda r: (r["record"].get("cycle", -1), r["folder"].stat().st_mtime)):
        cycle = row["record"].get("cycle")
        mechanism_id = str(row["record"].get("id"))
        meta = f"{row['record'].get('origin')}, {status_of(row)}" + (f", cycle {cycle}" if cycle is not None else "")
        if len(mechanism_id) + 2 + len(meta) <= 80:
            console.print(f"{mechanism_id}  {meta}", highlight=False)
        else:
            console.print(mechanism_id, highlight=False, overflow="ignore", crop=False)
            console.print(f"    {meta}", highlight=False)
        why = reason_of(row)
        if why:
            console.print(Padding(Text(" ".join(why.split())[:300], overflow="fold"), (0, 0, 0, 4)))
    console.print(f"each in {run_dir}/mechanisms/<id, @ as ->/; one in full: --show ID", highlight=False)


def show(row: dict[str, Any]) -> None:
    source = row["folder"] / "source.py"
    console.print(f"[bold]{row['record'].get('id')}[/] ({row['record'].get('origin')}, {status_of(row)})")
    console.print(f"folder: {row['folder']}", highlight=False)
    if source.exists():
        console.print(Syntax(source.read_text(), "python"))
    console.print_json(data={k: row[k] for k in ("record", "diagnosis", "validation", "effect")})


def main_mechanisms(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m graphs.bilevel mechanisms")
    ap.add_argument("run_dir", nargs="?", type=Path)
    ap.add_argument("--show", metavar="ID", help="print one mechanism's source and provenance (a built-in's name, or "
                    "an id of the run: NAME@hash)")  # fmt: skip
    args = ap.parse_args(argv)
    if args.run_dir is None:
        if args.show:
            if args.show not in ALL_BUILTIN_NAMES:
                console.print(f"[red]no built-in mechanism {args.show!r}[/]; one of {', '.join(ALL_BUILTIN_NAMES)}")
                return 1
            console.print(Syntax(builtin_source(args.show), "python"))
            return 0
        print_builtins()
        return 0
    if not (args.run_dir / "run.json").exists() and not (args.run_dir / "mechanisms").is_dir():
        console.print(f"[red]{args.run_dir} is not a run folder[/]", highlight=False)
        return 2
    rows = run_mechanisms(args.run_dir)
    if args.show:
        row = find(rows, args.show)
        if row is None:
            known = ", ".join(str(r["record"].get("id")) for r in rows) or "none"
            console.print(f"[red]no mechanism {args.show!r} in {args.run_dir}[/]; known: {known}", highlight=False)
            return 1
        show(row)
        return 0
    print_builtins()
    print_run(args.run_dir, rows)
    return 0
