"""Calling the active mechanism of a node, and proving that it ran.

Every call is a `mechanism_call` event in the trace: which mechanism, how often it asked the LLM, what it returned,
whether it changed what the LLM had proposed, and whether its output was refused. A mechanism that raises or returns
an invalid output does not stop the run: the call is recorded as failed and the default behaviour answers instead.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from llm.structured import LLMFatalError
from mechanisms.base import MechanismView, check_decision, check_proposal, proposal_cap, view_payload, view_seed
from nodes.context import InnerContext
from nodes.llm_proposer import ask_llm
from nodes.state import InnerState, MechanismRecord

# payload (JSON view), ask_llm(guidance, constraints) -> the node's output
MechanismFn = Callable[[dict[str, Any], Callable[[str, Mapping[str, Any] | None], dict[str, Any]]], dict[str, Any]]
PROPOSAL_FIELDS = ("changes", "hypothesis", "expected_direction", "edits")


@dataclass(frozen=True)
class Mechanism:
    """A mechanism ready to run as a node: its record (what state names) and the callable that runs it."""

    record: MechanismRecord
    fn: MechanismFn

    @property
    def id(self) -> str:
        return self.record["id"]


def mechanism_record(
    name: str, origin: str, source: str, params: dict[str, Any] | None = None, target: str = "propose"
) -> MechanismRecord:
    """One id scheme for every origin: name@hash of (source, parameters)."""
    sha = hashlib.sha256(source.encode()).hexdigest()
    digest = hashlib.sha256((sha + json.dumps(params or {}, sort_keys=True)).encode()).hexdigest()
    return MechanismRecord(
        id=f"{name}@{digest[:8]}", name=name, target=target, origin=origin, sha256=sha, params=params or {}
    )


def payload_for(
    state: InnerState, ctx: InnerContext, mechanism: Mechanism, result: dict[str, Any] | None = None
) -> dict[str, Any]:
    iteration = state.get("iteration", 0)
    settings = {**state.get("settings", {}), "noise_margin": ctx.noise_margin}
    return view_payload(
        trace=list(state.get("experiments", [])),
        space=ctx.space,
        incumbent=state.get("incumbent", {}),
        best_bpb=state.get("best_bpb"),
        iteration=iteration,
        seed=view_seed(ctx.seed, iteration, mechanism.record["target"]),
        settings=settings,
        params=mechanism.record.get("params", {}),
        result=result,
    )


def run_mechanism(
    state: InnerState, ctx: InnerContext, mechanism: Mechanism, result: dict[str, Any] | None = None
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Call the mechanism; return its checked output (None when refused or failed) and the call's trace event.

    A proposal comes back with `source`: "llm" or "fallback" when the mechanism passed on what the LLM proposed,
    "mechanism" when it made or changed the proposal itself."""
    asks: list[dict[str, Any]] = []

    def ask(guidance: str = "", constraints: Mapping[str, Any] | None = None) -> dict[str, Any]:
        proposal = ask_llm(
            state,
            ctx,
            guidance,
            dict(constraints) if constraints else None,
            caller=f"mechanism:{mechanism.record['name']}",
        )
        asks.append(
            {
                "guidance": guidance[:500],
                "constraints": constraints,
                "changes": proposal["changes"],
                "source": proposal["source"],
            }
        )
        return {k: proposal[k] for k in PROPOSAL_FIELDS if k in proposal}

    payload = payload_for(state, ctx, mechanism, result)
    start = time.monotonic()
    output: dict[str, Any] | None = None
    error: str | None = None
    try:
        output = mechanism.fn(payload, ask)
        view = MechanismView.from_payload(payload, lambda g, c: {})
        is_propose = mechanism.record["target"] == "propose"
        cap = proposal_cap(mechanism.record["name"], mechanism.record.get("origin", "generated"))
        problems = check_proposal(output, view, cap) if is_propose else check_decision(output)
        if problems:
            error, output = "output refused: " + "; ".join(problems), None
    except LLMFatalError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of a mechanism is contained and recorded
        error = f"{type(e).__name__}: {e}"[:2000]
    changed = mechanism.record["target"] == "propose" and bool(
        output and (not asks or output.get("changes") != asks[-1]["changes"])
    )
    if output is not None and mechanism.record["target"] == "propose":
        output = {**output, "source": "mechanism" if changed else asks[-1]["source"]}
    event: dict[str, Any] = {
        "mechanism": mechanism.id,
        "origin": mechanism.record.get("origin"),
        "target": mechanism.record["target"],
        "iteration": state.get("iteration", 0),
        "ok": error is None,
        "error": error,
        "llm_asks": len(asks),
        "asked": asks,
        "output": output,
        "seconds": round(time.monotonic() - start, 4),
        "changed_llm_proposal": changed,
    }
    ctx.ledger.event("mechanism_call", **event)
    return output, event
