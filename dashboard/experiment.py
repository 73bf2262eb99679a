"""One experiment: its record, files (diff of train.py, log tail, result), the LLM exchange and mechanism call that
produced its proposal, and where its time went."""

from __future__ import annotations

import json
from typing import Any

from dashboard.folders import Folder, Refused, Unreadable, check_part
from dashboard.run_folder import RunData
from dashboard.trace import mapping, number

EXCHANGE_KINDS = ("llm_call", "proposal_fallback", "mechanism_call", "propose")
STEP_KINDS = ("propose", "train_start", "train_end", "evaluate", "experiment")
LOG_LINES = 80


def find(run: RunData, experiment_id: str) -> dict[str, Any] | None:
    for record in run.experiments + run.pending:
        if record.get("id") == experiment_id:
            return record
    return None


def read_file(folder: Folder, *parts: str, tail: int | None = None) -> tuple[str | None, str | None]:
    """(text, None) or (None, why it is not shown)."""
    try:
        return (folder.tail(*parts, lines=tail) if tail else folder.read_text(*parts, limit=4 * 1024 * 1024)), None
    except FileNotFoundError:
        return None, f"{parts[-1]} is missing"
    except (Unreadable, Refused, OSError) as e:
        return None, str(e)


def pretty_json(text: str | None) -> str | None:
    if text is None:
        return None
    try:
        return json.dumps(json.loads(text), indent=2, sort_keys=True)
    except json.JSONDecodeError:
        return text


def exchange(run: RunData, record: dict[str, Any]) -> list[dict[str, Any]]:
    """The trace events that produced this experiment's proposal, in order: every LLM attempt (tokens, latency,
    why an answer was refused), the recorded fallback, the mechanism's call and the proposal itself."""
    iteration, eid = record.get("iteration"), record.get("id")
    out = []
    for e in run.trace.events:
        kind = e.get("kind")
        if kind not in EXCHANGE_KINDS:
            continue
        if kind == "propose" and e.get("experiment") == eid:
            out.append(e)
        elif kind != "propose" and e.get("iteration") == iteration and e.get("level", "L1") == "L1":
            out.append(e)
    return out


def steps(run: RunData, eid: str) -> list[dict[str, Any]]:
    return [
        e
        for e in run.trace.events
        if e.get("kind") in STEP_KINDS
        and (e.get("experiment") == eid or (e.get("kind") == "experiment" and e.get("id") == eid))
    ]


def timing(
    record: dict[str, Any], events: list[dict[str, Any]], outcome: dict[str, Any] | None
) -> list[tuple[str, float]]:
    """Where the experiment's time went, in seconds: the LLM answering, the rest of the mechanism's call, training
    (the budget-counted part), the trainer's start-up and evaluation, the executor's own overhead."""
    llm = sum(number(e.get("latency_s")) for e in events if e.get("kind") == "llm_call")
    mechanism = sum(number(e.get("seconds")) for e in events if e.get("kind") == "mechanism_call")
    result = mapping(mapping(outcome).get("result"))
    wall = _number(mapping(outcome).get("wall_seconds")) or _number(record.get("seconds"))
    training = _number(result.get("training_seconds")) or _number(record.get("training_seconds"))
    total = _number(result.get("total_seconds"))
    split = [("LLM", llm), ("mechanism (besides its LLM asks)", max(0.0, mechanism - llm))]
    if training is not None:
        split.append(("training (budget)", training))
        if total is not None:
            split.append(("start-up and evaluation", max(0.0, total - training)))
            if wall is not None:
                split.append(("executor overhead", max(0.0, wall - total)))
        elif wall is not None:
            split.append(("start-up, evaluation, overhead", max(0.0, wall - training)))
    elif wall is not None:
        split.append(("training run (wall)", wall))
    return [(name, seconds) for name, seconds in split if seconds > 0]


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def detail(run: RunData, experiment_id: str) -> dict[str, Any] | None:
    record = find(run, experiment_id)
    if record is None:
        return None
    folder_name = check_part(experiment_id)
    notes: list[str] = []
    files: dict[str, str | None] = {}
    if not run.folder.exists("experiments", folder_name):
        notes.append(f"experiments/{experiment_id}/ is missing (a packed run keeps only its ledger)")
    else:
        missing = []
        for name, tail in (("diff.patch", None), ("log.txt", LOG_LINES), ("result.json", None), ("outcome.json", None)):
            text, why = read_file(run.folder, "experiments", folder_name, name, tail=tail)
            files[name] = pretty_json(text) if name.endswith(".json") else text
            if why:
                missing.append((name, why))
        # the executor's outcome.json carries the result and a log tail when the trainer wrote no files of its own
        covered = {"result.json", "log.txt"} if files.get("outcome.json") else set()
        notes += [why for name, why in missing if name not in covered or "missing" not in why]
    outcome = None
    if files.get("outcome.json"):
        try:
            outcome = json.loads(files["outcome.json"] or "")
        except json.JSONDecodeError:
            notes.append("outcome.json is not valid JSON")
    if outcome and not files.get("log.txt") and outcome.get("log_tail"):
        files["log.txt"] = str(outcome["log_tail"])
    exchanged = exchange(run, record)
    return {
        "record": record,
        "files": files,
        "notes": notes,
        "exchange": exchanged,
        "steps": steps(run, experiment_id),
        "timing": timing(record, exchanged, outcome if isinstance(outcome, dict) else None),
        "outcome": outcome,
    }
