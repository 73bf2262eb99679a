"""One mechanism of a run: its source, the diagnosis that led to it, its validation report, its measured effect and
the outer loop's verdict, from `mechanisms/<id>/` and the trace. A built-in that was never injected (the start
mechanism) has no folder: its source is the project's own module."""

from __future__ import annotations

from typing import Any

from dashboard.experiment import pretty_json, read_file
from dashboard.folders import check_part
from dashboard.run_folder import RunData

FILES = ("source.py", "diagnosis.json", "validation.json", "effect.json", "record.json")


def folder_name(mechanism_id: str) -> str:
    """The folder `inject` writes: the id with its `@` replaced."""
    return check_part(mechanism_id.replace("@", "-"))


def builtin_source(mechanism_id: str) -> str | None:
    from mechanisms.base import ALL_BUILTIN_NAMES
    from mechanisms.base import builtin_source as source_of

    name = mechanism_id.split("@", 1)[0]
    return source_of(name) if name in ALL_BUILTIN_NAMES else None


def detail(run: RunData, mechanism_id: str) -> dict[str, Any] | None:
    use = run.mechanisms.get(mechanism_id)
    if use is None:
        return None
    notes: list[str] = []
    files: dict[str, str | None] = {}
    name = folder_name(mechanism_id)
    if run.folder.exists("mechanisms", name):
        for file in FILES:
            text, why = read_file(run.folder, "mechanisms", name, file)
            files[file] = pretty_json(text) if file.endswith(".json") else text
            if why and file != "effect.json":
                notes.append(why)
    source_note = None
    if not files.get("source.py"):
        builtin = builtin_source(mechanism_id)
        if builtin is not None:
            files["source.py"] = builtin
            source_note = "built-in mechanism: its source as the installed project has it now"
        else:
            notes.append(f"mechanisms/{name}/ is missing (a packed run keeps only its ledger)")
    diagnoses = [e.get("diagnosis") for e in run.trace.of("analyze") if _cycle_of(e) in _cycles(use)]
    return {
        "use": use,
        "files": files,
        "notes": notes,
        "source_note": source_note,
        "diagnoses": [d for d in diagnoses if d],
        "experiments": [e for e in run.experiments if e.get("mechanism") == mechanism_id],
    }


def _cycles(use: dict[str, Any]) -> set[Any]:
    return {d.get("cycle") for d in use["decisions"] if d.get("kind") in ("inject", "generate", "validate")}


def _cycle_of(event: dict[str, Any]) -> Any:
    return event.get("cycle")


def timeline(run: RunData) -> list[dict[str, Any]]:
    """The outer loop's story in order: segments with the mechanism that ran them, and each decision."""
    rows: list[dict[str, Any]] = []
    for e in run.trace.events:
        kind = e.get("kind")
        if kind == "segment_end":
            rows.append(
                {
                    "kind": "segment",
                    "cycle": e.get("cycle"),
                    "mechanism": e.get("mechanism"),
                    "text": f"experiments {e.get('first')}–{e.get('last')}, progress {_f(e.get('progress'))} bpb, "
                    f"kept {e.get('kept')}, crashes {e.get('crashes')}",
                }
            )
        elif kind == "inject":
            text = f"injected, replacing {e.get('replaces')}" if e.get("injected") else f"refused: {e.get('reason')}"
            rows.append({"kind": "inject", "cycle": e.get("cycle"), "mechanism": e.get("mechanism"), "text": text})
        elif kind == "compare":
            rows.append(
                {
                    "kind": e.get("event"),
                    "cycle": e.get("cycle"),
                    "mechanism": e.get("mechanism"),
                    "text": str(e.get("evidence") or ""),
                }
            )
        elif kind == "validate" and not e.get("ok"):
            rows.append(
                {
                    "kind": "invalid",
                    "cycle": e.get("cycle"),
                    "mechanism": e.get("mechanism"),
                    "text": "; ".join(str(x) for x in e.get("errors") or [])[:400],
                }
            )
    return rows


def _f(value: Any) -> str:
    return f"{value:.6f}" if isinstance(value, int | float) else "—"
