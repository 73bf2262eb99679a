"""One ablation folder read back: its plan and progress (ablation.json), the noise floor, every run's summary, and
the report's figures — the groups' Δ val_bpb with confidence intervals. The figures are computed by the project's
own `ablation.collect` + `ablation.figures` from the folder as it is now (cached until it changes); where that
cannot be done (a run still writing, a file missing) the last written report/figures.json stands in, said so."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dashboard.folders import ABLATION_MARKER, Folder, Refused, Unreadable
from dashboard.noise import noise_floor
from dashboard.run_folder import read_json_note

REPORT = "report"
_cache: dict[Path, tuple[tuple[Any, ...], dict[str, Any] | None, str | None]] = {}
_lock = threading.Lock()


@dataclass
class AblationData:
    folder: Folder
    manifest: dict[str, Any]
    runs: list[dict[str, Any]]
    noise: dict[str, Any] | None
    analysis: dict[str, Any] | None
    analysis_source: str | None
    figures: list[str]
    report_md: str | None
    notes: list[str] = field(default_factory=list)

    @property
    def spec(self) -> dict[str, Any]:
        spec = self.manifest.get("spec")
        return spec if isinstance(spec, dict) else {}


def run_rows(folder: Folder, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Every run the manifest plans or the runs/ folder holds, with its summary figures where it has finished."""
    planned = manifest.get("runs")
    entries: dict[str, Any] = planned if isinstance(planned, dict) else {}
    names = sorted(set(entries) | set(folder.names("runs")))
    rows = []
    for name in names:
        entry: dict[str, Any] = entries[name] if isinstance(entries.get(name), dict) else {}
        row: dict[str, Any] = {
            "id": name,
            "group": entry.get("group", name.rsplit("-r", 1)[0]),
            "repeat": entry.get("repeat"),
            "seed": entry.get("seed"),
            "status": entry.get("status", "not in the manifest"),
            "key": None,
        }
        if folder.exists("runs", name):
            row["key"] = f"{folder.key}/runs/{name}"
            try:
                summary = folder.read_json("runs", name, "summary.json")
                row.update({k: summary.get(k) for k in ("baseline_bpb", "best_bpb", "delta_bpb", "kept", "crashes")})
                row["experiments"] = summary.get("experiments")
            except (FileNotFoundError, Unreadable, Refused, OSError, AttributeError):
                pass
        rows.append(row)
    return sorted(rows, key=lambda r: (str(r["group"]), r["repeat"] if isinstance(r["repeat"], int) else 0))


def escapes(folder: Folder) -> list[str]:
    """Links under the folder that point outside the served root: the project's readers would follow them."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder.path):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path.is_symlink() and not path.resolve().is_relative_to(folder.root):
                out.append(str(path.relative_to(folder.path)))
    return out


def signature(folder: Folder) -> tuple[Any, ...]:
    """What the ablation page shows changes when the manifest, the noise floor, a run's summary or confirmations, or
    the report change — not with every event a running run appends (a surrogate ablation writes many a second, and
    the group figures take seconds to compute)."""
    parts: list[Any] = [folder.signature(ABLATION_MARKER, "noise", "runs", f"{REPORT}/figures.json")]
    for name in folder.names("runs"):
        parts.append(folder.signature(f"runs/{name}/summary.json", f"runs/{name}/confirm"))
    return tuple(parts)


def analyse(folder: Folder) -> tuple[dict[str, Any] | None, str | None]:
    """(analysis, where it came from) — computed now, or the written report's, or (None, why not)."""
    key = signature(folder)
    with _lock:
        hit = _cache.get(folder.path)
        if hit and hit[0] == key:
            return hit[1], hit[2]
    result: tuple[dict[str, Any] | None, str | None]
    outside = escapes(folder)
    if outside:
        result = None, f"not computed: {', '.join(outside[:3])} link(s) outside the served folder"
    else:
        try:
            from ablation.collect import collect
            from ablation.figures import analyse as analyse_data

            result = analyse_data(collect(folder.path)), "computed from the folder now"
        except Exception as e:  # the project's readers raise what they meet; the page says it and goes on
            written = written_analysis(folder)
            why = f"{type(e).__name__}: {e}"
            result = (written, f"report/figures.json (computing afresh failed: {why})") if written else (None, why)
    with _lock:
        _cache[folder.path] = (key, *result)
    return result


def written_analysis(folder: Folder) -> dict[str, Any] | None:
    try:
        figures = folder.read_json(REPORT, "figures.json")
    except (FileNotFoundError, Unreadable, Refused, OSError):
        return None
    analysis = figures.get("analysis") if isinstance(figures, dict) else None
    return analysis if isinstance(analysis, dict) else None


def load_ablation(folder: Folder, *, analyse_now: bool = True) -> AblationData:
    notes: list[str] = []
    manifest = read_json_note(folder, ABLATION_MARKER, notes, required=True)
    manifest = manifest if isinstance(manifest, dict) else {}
    analysis, source = analyse(folder) if manifest and analyse_now else (None, None)
    if analysis is None and source:
        notes.append(f"group figures: {source}")
    report_md = None
    if folder.is_file(REPORT, "report.md"):
        try:
            report_md = folder.read_text(REPORT, "report.md", limit=1024 * 1024)
        except (FileNotFoundError, Unreadable, Refused, OSError) as e:
            notes.append(str(e))
    return AblationData(
        folder=folder,
        manifest=manifest,
        runs=run_rows(folder, manifest),
        noise=noise_floor(folder),
        analysis=analysis,
        analysis_source=source,
        figures=[n for n in folder.names(REPORT) if n.endswith(".png")],
        report_md=report_md,
        notes=notes,
    )
