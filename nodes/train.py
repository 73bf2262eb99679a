"""The `train` node: write each candidate train.py of the batch into its experiment's folder and hand the batch
to the executor (trials of a batch run in parallel where the executor allows). With a trial pipeline in the context
(`trials/pipeline.py`), `propose` has already started each trial the moment it was proposed (`start_early`); this
node then only waits for their outcomes.

Idempotent on the experiment id: once an experiment has an outcome file, the node reuses it and never trains the
same experiment twice (a resume after kill -9 lands here with the batch already in state).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from langgraph.runtime import Runtime

from checkpoints.run_folder import write_atomic, write_json_atomic
from nodes.context import InnerContext
from nodes.state import InnerState
from trials.candidate import EditError, apply_edits, rewrite_constants, unified_diff
from trials.launcher import Trial


def incumbent_source(state: InnerState, ctx: InnerContext) -> str:
    """The train.py of the incumbent (code-mode edits accumulate in kept experiments), else the run's base copy."""
    incumbent_id = state.get("incumbent_id")
    if incumbent_id:
        path = ctx.ledger.root / "experiments" / incumbent_id / "train.py"
        if path.exists():
            return path.read_text()
    return ctx.base_source


def candidate_source(item: dict[str, Any], base: str) -> str:
    source = apply_edits(base, item["edits"]) if item.get("edits") else base
    return rewrite_constants(source, item["params"])


def prepare_trial(item: dict[str, Any], base: str, ctx: InnerContext) -> dict[str, Any] | None:
    """Write the candidate's files; None when ready to run, else the outcome of a refused candidate."""
    folder = ctx.ledger.experiment_dir(item["id"])
    try:
        source = candidate_source(item, base)
    except EditError as e:
        return {"ok": False, "error": f"candidate refused: {e}", "returncode": None, "wall_seconds": 0.0}
    write_atomic(folder / "train.py", source)
    write_atomic(folder / "diff.patch", unified_diff(base, source, "incumbent/train.py", f"{item['id']}/train.py"))
    write_json_atomic(folder / "proposal.json", item)
    ctx.ledger.event(
        "train_start", event_id=f"{item['id']}:train_start", experiment=item["id"], budget_s=ctx.trainer.budget_s
    )
    return None


def start_early(item: dict[str, Any], state: InnerState, ctx: InnerContext) -> None:
    """Write `item`'s candidate and start its training now, when the run has a trial pipeline (a refused
    candidate is left to `train`, which records the refusal)."""
    if ctx.pipeline is None or reusable_outcome(ctx.ledger.experiment_dir(item["id"]), item) is not None:
        return
    if prepare_trial(item, incumbent_source(state, ctx), ctx) is None:
        ctx.pipeline.start(Trial(item["id"], ctx.ledger.experiment_dir(item["id"])), ctx.trainer)


def train(state: InnerState, runtime: Runtime[InnerContext]) -> dict[str, Any]:
    ctx = runtime.context
    batch = state.get("batch", [])
    base = incumbent_source(state, ctx)
    outcomes: dict[str, dict[str, Any]] = {}
    to_run: list[Trial] = []
    for item in batch:
        previous = reusable_outcome(ctx.ledger.experiment_dir(item["id"]), item)
        if previous is not None:
            ctx.ledger.event("train_reused", event_id=f"{item['id']}:train_reused", experiment=item["id"])
            outcomes[item["id"]] = previous
            continue
        trial = Trial(item["id"], ctx.ledger.experiment_dir(item["id"]))
        if ctx.pipeline is not None and ctx.pipeline.started(item["id"]):
            to_run.append(trial)  # proposed, written and started by `propose`
            continue
        refused = prepare_trial(item, base, ctx)
        if refused is not None:
            _finish(ctx, item["id"], refused)
            outcomes[item["id"]] = refused
        else:
            to_run.append(trial)
    if to_run:
        ran = (
            ctx.pipeline.outcomes(to_run, ctx.trainer)
            if ctx.pipeline is not None
            else ctx.executor.run_batch(to_run, ctx.trainer)
        )
        for trial, outcome in zip(to_run, ran, strict=True):
            _finish(ctx, trial.experiment_id, outcome)
            outcomes[trial.experiment_id] = outcome
    return {"outcomes": [outcomes[item["id"]] for item in batch]}


def _finish(ctx: InnerContext, experiment_id: str, outcome: dict[str, Any]) -> None:
    write_json_atomic(ctx.ledger.experiment_dir(experiment_id) / "outcome.json", outcome)
    ctx.ledger.event(
        "train_end",
        event_id=f"{experiment_id}:train_end",
        experiment=experiment_id,
        ok=outcome["ok"],
        error=outcome.get("error"),
        wall_seconds=outcome.get("wall_seconds"),
    )


def reusable_outcome(folder: Path, item: dict[str, Any]) -> dict[str, Any] | None:
    """The outcome already trained for this very proposal (same id *and* same proposal), else None."""
    try:
        trained = json.loads((folder / "proposal.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if trained != json.loads(json.dumps(item)):
        return None  # the folder holds another proposal under this id (a run continued from an older state)
    return read_outcome_file(folder / "outcome.json")


def read_outcome_file(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        outcome = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # torn by a kill: train again
    return outcome if isinstance(outcome, dict) and "ok" in outcome else None
