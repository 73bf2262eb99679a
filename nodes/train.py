"""The `train` node: write the candidate train.py into the experiment's folder and run it through the executor.

Idempotent on the experiment id: once an experiment has an outcome file, the node reuses it and never trains the
same experiment twice (a resume after kill -9 lands here with the proposal already in state).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from langgraph.runtime import Runtime

from nodes.candidate import EditError, apply_edits, rewrite_constants, unified_diff
from nodes.context import InnerContext
from nodes.ledger import write_atomic, write_json_atomic
from nodes.state import InnerState
from nodes.trainer import Trial


def incumbent_source(state: InnerState, ctx: InnerContext) -> str:
    """The train.py of the incumbent (code-mode edits accumulate in kept experiments), else the run's base copy."""
    incumbent_id = state.get("incumbent_id")
    if incumbent_id:
        path = ctx.ledger.root / "experiments" / incumbent_id / "train.py"
        if path.exists():
            return path.read_text()
    return ctx.base_source


def candidate_source(pending: dict[str, Any], base: str) -> str:
    source = apply_edits(base, pending["edits"]) if pending.get("edits") else base
    return rewrite_constants(source, pending["params"])


def train(state: InnerState, runtime: Runtime[InnerContext]) -> dict[str, Any]:
    ctx = runtime.context
    pending = state["pending"] or {}
    folder = ctx.ledger.experiment_dir(pending["id"])
    outcome_path = folder / "outcome.json"
    if outcome_path.exists():
        outcome = _read_outcome(outcome_path)
        if outcome is not None:
            ctx.ledger.event("train_reused", event_id=f"{pending['id']}:train_reused", experiment=pending["id"])
            return {"outcome": outcome}

    base = incumbent_source(state, ctx)
    try:
        source = candidate_source(pending, base)
    except EditError as e:
        outcome = {"ok": False, "error": f"candidate refused: {e}", "returncode": None, "wall_seconds": 0.0}
    else:
        write_atomic(folder / "train.py", source)
        write_atomic(
            folder / "diff.patch", unified_diff(base, source, "incumbent/train.py", f"{pending['id']}/train.py")
        )
        write_json_atomic(folder / "proposal.json", pending)
        ctx.ledger.event(
            "train_start",
            event_id=f"{pending['id']}:train_start",
            experiment=pending["id"],
            budget_s=ctx.trainer.budget_s,
        )
        outcome = ctx.executor.run(Trial(pending["id"], folder), ctx.trainer)
    write_json_atomic(outcome_path, outcome)
    ctx.ledger.event(
        "train_end",
        event_id=f"{pending['id']}:train_end",
        experiment=pending["id"],
        ok=outcome["ok"],
        error=outcome.get("error"),
        wall_seconds=outcome.get("wall_seconds"),
    )
    return {"outcome": outcome}


def _read_outcome(path: Path) -> dict[str, Any] | None:
    try:
        outcome = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # torn by a kill: train again
    return outcome if isinstance(outcome, dict) and "ok" in outcome else None
