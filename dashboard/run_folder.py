"""One run folder read back for the dashboard: settings, experiments (decided and in flight), segments, mechanisms,
the running best. Whatever is missing or torn becomes a note on the page, never an exception."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from checkpoints.trace import experiments as decided
from dashboard.folders import Folder, Refused, Served, Unreadable
from dashboard.noise import ablation_noise
from dashboard.segments import mechanism_use, segments_of
from dashboard.trace import Trace, read_trace

SOURCES = ("baseline", "llm", "fallback", "mechanism")  # where a proposal came from (the experiment record says)
INNER_STEPS = {"propose": "propose", "train_start": "train", "train_end": "train", "evaluate": "evaluate"}
INNER_STEPS |= {"experiment": "decide"}
OUTER_STEPS = {"segment_start": "run_inner", "segment_end": "run_inner", "compare": "compare", "adjust": "adjust"}
OUTER_STEPS |= {"analyze": "analyze", "generate": "generate", "validate": "validate", "inject": "inject"}
WATCHED = ("run.json", "trace.jsonl", "results.tsv", "summary.json", "experiments", "mechanisms")


@dataclass
class RunData:
    folder: Folder
    config: dict[str, Any]
    summary: dict[str, Any] | None
    trace: Trace
    experiments: list[dict[str, Any]]
    pending: list[dict[str, Any]]
    segments: list[dict[str, Any]]
    mechanisms: dict[str, dict[str, Any]]
    active: str | None
    finished: bool
    last_event: float | None
    inner_step: str | None
    outer_step: str | None
    noise: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.folder.key

    @property
    def baseline(self) -> float | None:
        return bpb(self.experiments[0]) if self.experiments else None

    @property
    def best(self) -> dict[str, Any] | None:
        scored = [e for e in self.experiments if e.get("status") != "crash" and bpb(e) is not None]
        return min(scored, key=lambda e: bpb(e) or math.inf) if scored else None

    @property
    def planned(self) -> int | None:
        iterations = self.config.get("iterations")
        return int(iterations) + 1 if isinstance(iterations, int) else None

    def counts(self) -> dict[str, int]:
        """Kept, discarded and crashed experiments after the baseline (as summary.json and the report count them)."""
        out = {"keep": 0, "discard": 0, "crash": 0}
        for e in self.experiments:
            if e.get("proposal_source") != "baseline" and e.get("iteration") != 0:
                out[str(e.get("status"))] = out.get(str(e.get("status")), 0) + 1
        return out


def bpb(record: dict[str, Any]) -> float | None:
    value = record.get("val_bpb")
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def running_best(records: list[dict[str, Any]]) -> list[float | None]:
    best: float | None = None
    out: list[float | None] = []
    for e in records:
        value = bpb(e)
        if e.get("status") != "crash" and value is not None:
            best = value if best is None else min(best, value)
        out.append(best)
    return out


def read_json_note(folder: Folder, name: str, notes: list[str], *, required: bool) -> Any:
    try:
        return folder.read_json(name)
    except FileNotFoundError:
        if required:
            notes.append(f"{name} is missing")
    except (Unreadable, Refused, OSError) as e:
        notes.append(str(e))
    return None


def in_flight(trace: Trace, done: set[str]) -> list[dict[str, Any]]:
    """Experiments proposed but not decided yet, with the last step they reached."""
    pending: dict[str, dict[str, Any]] = {}
    for e in trace.events:
        eid = e.get("experiment")
        if not isinstance(eid, str) or eid in done:
            continue
        if e.get("kind") == "propose":
            pending[eid] = {**e, "id": eid, "status": "proposed"}
        elif eid in pending and e.get("kind") in ("train_start", "train_end", "evaluate"):
            pending[eid]["status"] = {"train_start": "training", "train_end": "trained"}.get(e["kind"], "evaluated")
    return list(pending.values())


def last_step(trace: Trace, steps: dict[str, str]) -> str | None:
    for e in reversed(trace.events):
        if e.get("kind") in steps:
            return steps[e["kind"]]
    return None


def is_finished(trace: Trace) -> bool:
    kinds = [e.get("kind") for e in trace.events if e.get("kind") in ("run_start", "run_end")]
    return bool(kinds) and kinds[-1] == "run_end"


def load_run(served: Served, folder: Folder) -> RunData:
    notes: list[str] = []
    config = read_json_note(folder, "run.json", notes, required=True) or {}
    summary = read_json_note(folder, "summary.json", notes, required=False)
    trace = read_trace(folder)
    if trace.missing:
        notes.append("trace.jsonl is missing: no experiment has been recorded yet")
    if trace.skipped:
        notes.append(f"trace.jsonl: {trace.skipped} line(s) not valid JSON were skipped (a write in progress or torn)")
    experiments = decided(trace.events)
    segments = segments_of(trace)
    mechanisms, active = mechanism_use(trace, segments)
    times = [float(e["time"]) for e in trace.events if isinstance(e.get("time"), int | float)]
    return RunData(
        folder=folder,
        config=config if isinstance(config, dict) else {},
        summary=summary if isinstance(summary, dict) else None,
        trace=trace,
        experiments=experiments,
        pending=in_flight(trace, {e["id"] for e in experiments}),
        segments=segments,
        mechanisms=mechanisms,
        active=active,
        finished=is_finished(trace),
        last_event=max(times) if times else None,
        inner_step=last_step(trace, INNER_STEPS),
        outer_step=last_step(trace, OUTER_STEPS),
        noise=ablation_noise(served, folder),
        notes=notes,
    )


def age(run: RunData) -> str:
    if run.last_event is None:
        return "no events"
    seconds = max(0.0, time.time() - run.last_event)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h ago"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(run.last_event))
