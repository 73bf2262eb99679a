"""One reader of a run's experiments (checkpoints/trace.py): the report, the ablation's collection, the dashboard and
the rebuild from the ledger see the same experiments of the same trace, whatever the trace holds — a torn last line,
a line that is JSON but not an object, a second record of a decided experiment, records out of order."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ablation.collect import experiments as collected
from checkpoints.rebuild import LEDGER_FIELDS, experiments_from, trace_events
from checkpoints.run_folder import Ledger
from dashboard.folders import Served
from dashboard.run_folder import load_run
from graphs.report import write_report


def record(eid: str, iteration: int, status: str, bpb: float, event_id: str) -> dict[str, Any]:
    return {
        "event_id": event_id, "kind": "experiment", "time": 100.0 + iteration, "id": eid, "iteration": iteration,
        "status": status, "val_bpb": bpb, "params": {"DEPTH": 4 + iteration}, "description": f"{eid} {status}",
    }  # fmt: skip


def write_trace(run: Path) -> None:
    run.mkdir(parents=True)
    (run / "run.json").write_text("{}\n")
    lines = [
        json.dumps({"event_id": "s", "kind": "run_start", "time": 99.0}),
        json.dumps(record("e0001", 1, "discard", 1.2, "e0001:decide")),  # written before e0000: out of order
        json.dumps(record("e0000", 0, "keep", 1.5, "e0000:decide")),
        json.dumps(["not", "an", "event"]),
        json.dumps(record("e0001", 1, "keep", 0.9, "e0001:decide:again")),  # a second record: never replaces the first
        json.dumps(record("e0002", 2, "keep", 1.1, "e0002:decide")),
    ]
    (run / "trace.jsonl").write_text("\n".join(lines) + '\n{"event_id": "t", "kind": "experiment", "id": "e00')


def test_every_reader_sees_the_same_experiments(tmp_path: Path) -> None:
    run = tmp_path / "run"
    write_trace(run)
    expected = [("e0000", "keep", 1.5), ("e0001", "discard", 1.2), ("e0002", "keep", 1.1)]

    def summary(records: list[dict[str, Any]]) -> list[tuple[str, str, float]]:
        return [(r["id"], r["status"], r["val_bpb"]) for r in records]

    assert summary(Ledger(run).experiments()) == expected
    assert summary(collected(Ledger(run))) == expected
    rebuilt = experiments_from(trace_events(run))
    assert summary(rebuilt) == expected and not any(set(LEDGER_FIELDS) & set(r) for r in rebuilt)
    served = Served.of([tmp_path])
    dashboard = load_run(served, served.folder("0/run"))
    assert summary(dashboard.experiments) == expected
    assert dashboard.trace.skipped == 2 and dashboard.trace.torn_tail  # the list line and the torn tail
    report = write_report(run).read_text()
    assert "- experiments: 3 (kept 1, crashes 0)" in report and "- best val_bpb: 1.1" in report
