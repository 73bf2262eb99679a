"""The `validate` node (Level 2): the candidate mechanism must pass the static policy, run in the sandbox, honour
the contract on synthetic traces and give sound outputs in a counterfactual replay of the recorded trace — before
it may become a node of the inner graph. A refused candidate is recorded with its reasons; the run goes on with the
mechanism it has. Every candidate, accepted or refused, keeps its source, diagnosis, validation report and record in
`mechanisms/<id>/` of the run folder."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from checkpoints.run_folder import Ledger, write_atomic, write_json_atomic
from mechanisms.validation import validate_mechanism
from nodes.context import OuterContext
from nodes.state import MechanismRecord, OuterState


def mechanism_folder_name(mechanism_id: str) -> str:
    return mechanism_id.replace("@", "-")


def keep_candidate(
    ledger: Ledger,
    record: MechanismRecord,
    source: str,
    diagnosis: dict[str, Any],
    validation: dict[str, Any],
    status: str,
    cycle: int,
) -> dict[str, Any]:
    """Write the candidate's folder: source.py, diagnosis.json, validation.json and record.json (with its status:
    "refused", "validated", "injected"); return the record as written."""
    folder = ledger.mechanism_dir(mechanism_folder_name(record["id"]))
    write_atomic(folder / "source.py", source)
    kept: dict[str, Any] = dict(record)
    if record.get("origin") == "generated":
        kept["path"] = str((folder / "source.py").relative_to(ledger.root))
    write_json_atomic(folder / "diagnosis.json", diagnosis)
    write_json_atomic(folder / "validation.json", validation)
    write_json_atomic(folder / "record.json", {**kept, "status": status, "cycle": cycle})
    return kept


def validate(state: OuterState, runtime: Runtime[OuterContext]) -> dict[str, Any]:
    ctx = runtime.context
    candidate = state.get("candidate")
    if not ctx.acts("mechanism") or state.get("stop_reason") or state.get("on_trial"):
        return {}
    if candidate is None:
        ctx.inner.ledger.event("validate", cycle=state.get("cycle", 0), ok=False, errors=["no candidate was produced"])
        return {"validation": {"ok": False, "errors": ["no candidate was produced"]}}
    source = state.get("candidate_source") or ""
    try:
        report = validate_mechanism(
            source,
            ctx.inner.space,
            list(state["inner"].get("experiments", [])),
            seed=ctx.inner.seed,
            settings=state["inner"].get("settings", {}),
            params=candidate.get("params", {}),
        ).to_dict()
    except Exception as e:  # noqa: BLE001 - a validator failure refuses the candidate; it never stops the run
        report = {"ok": False, "stage": "internal", "errors": [f"the validator failed: {type(e).__name__}: {e}"]}
    keep_candidate(
        ctx.inner.ledger,
        candidate,
        source,
        state.get("diagnosis") or {},
        report,
        "validated" if report["ok"] else "refused",
        state.get("cycle", 0),
    )
    ctx.inner.ledger.event(
        "validate",
        event_id=f"cycle-{state.get('cycle', 0):03d}:validate:{state.get('repairs', 0)}:{candidate['id']}",
        cycle=state.get("cycle", 0),
        mechanism=candidate["id"],
        **report,
    )
    update: dict[str, Any] = {"validation": report}
    if not report["ok"]:
        update["repairs"] = state.get("repairs", 0) + 1
        update["history"] = [
            *state.get("history", []),
            {
                "cycle": state.get("cycle", 0),
                "event": "refused",
                "mechanism": candidate["id"],
                "reason": report["errors"][:3],
            },
        ]
    return update
