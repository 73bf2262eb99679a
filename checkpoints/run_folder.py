"""The run folder: results.tsv, trace.jsonl, one folder per experiment and per mechanism.

Everything here is written so that a kill -9 at any moment leaves a consistent folder: whole files are replaced
atomically, and trace events carry an id so that a node replayed after a resume does not write its events twice.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from checkpoints import trace

RESULTS_HEADER = "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` so that a reader sees the old file or the new one, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def results_row(record: dict[str, Any]) -> str:
    """One results.tsv line in autoresearch's format (a crash is reported as 0.000000)."""
    bpb = record.get("val_bpb")
    bpb_text = f"{bpb:.6f}" if isinstance(bpb, float) and record["status"] != "crash" else "0.000000"
    memory_gb = (record.get("peak_memory_mb") or 0.0) / 1024
    description = " ".join(str(record.get("description", "")).split())[:200]
    if record.get("surrogate"):  # not a training: val_bpb served by the surrogate model
        description = f"[surrogate] {description}"
    return f"{record['id']}\t{bpb_text}\t{memory_gb:.1f}\t{record['status']}\t{description}\n"


class Ledger:
    """The run folder of one run. Thread-safe enough for one process: appends are line-sized writes."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.trace_path = self.root / trace.TRACE
        self.results_path = self.root / "results.tsv"
        self._seen: set[str] = {e["event_id"] for e in self.events() if "event_id" in e}

    # --- trace.jsonl -------------------------------------------------------------------------------------------
    def event(self, kind: str, event_id: str | None = None, **fields: Any) -> dict[str, Any]:
        """Append one event. An event with an `event_id` already in the trace is not written again."""
        eid = event_id or uuid.uuid4().hex
        entry = {"event_id": eid, "kind": kind, "time": time.time(), **fields}
        if eid in self._seen:
            return entry
        line = json.dumps(entry, sort_keys=True, default=str)
        with open(self.trace_path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._seen.add(eid)
        return entry

    def events(self, kind: str | None = None) -> Iterator[dict[str, Any]]:
        """Events in order, read by checkpoints/trace.py (a torn last line is skipped)."""
        events = trace.read(self.root).events
        yield from (e for e in events if kind is None or e.get("kind") == kind)

    def experiments(self) -> list[dict[str, Any]]:
        """The decided experiments, each once, in the run's order (checkpoints/trace.py)."""
        return trace.experiments(self.events("experiment"))

    # --- results.tsv -------------------------------------------------------------------------------------------
    def write_results(self, experiments: Iterable[dict[str, Any]]) -> None:
        """Rewrite results.tsv from the experiments in state, so the two can never disagree."""
        write_atomic(self.results_path, RESULTS_HEADER + "".join(results_row(r) for r in experiments))

    # --- folders -----------------------------------------------------------------------------------------------
    def experiment_dir(self, experiment_id: str) -> Path:
        path = self.root / "experiments" / experiment_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def mechanism_dir(self, mechanism_id: str) -> Path:
        path = self.root / "mechanisms" / mechanism_id
        path.mkdir(parents=True, exist_ok=True)
        return path
