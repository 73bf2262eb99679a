"""Calling the active mechanism of a node, and proving that it ran.

Every call is a `mechanism_call` event in the trace: which mechanism, how often it asked the LLM, what it returned,
whether it changed what the LLM had proposed, and whether its output was refused. A mechanism that raises or returns
an invalid output does not stop the run: the call is recorded as failed and the default behaviour answers instead.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from mechanisms.base import MechanismView, check_decision, check_proposal
from nodes.context import InnerContext
from nodes.llm_proposer import ask_llm
from nodes.state import InnerState, MechanismRecord


@dataclass(frozen=True)
class Mechanism:
    """A mechanism ready to run as a node: its record (what state names) and the callable that runs it."""

    record: MechanismRecord
    fn: Callable[[MechanismView], dict[str, Any]]

    @property
    def id(self) -> str:
        return self.record["id"]


def make_view(state: InnerState, ctx: InnerContext, mechanism: Mechanism, asks: list[dict[str, Any]],
              result: dict[str, Any] | None = None) -> MechanismView:
    """The read-only view a mechanism sees. `asks` collects every proposal the mechanism obtained from the LLM."""

    def ask(guidance: str = "", constraints: dict[str, Any] | None = None) -> dict[str, Any]:
        proposal = ask_llm(state, ctx, guidance, constraints, caller=f"mechanism:{mechanism.record['name']}")
        asks.append({"guidance": guidance[:500], "constraints": constraints, "changes": proposal["changes"],
                     "source": proposal["source"]})
        return proposal

    iteration = state.get("iteration", 0)
    return MechanismView(
        trace=tuple(MappingProxyType(dict(e)) for e in state.get("experiments", [])),
        space=ctx.space,
        incumbent=MappingProxyType(dict(state.get("incumbent", {}))),
        best_bpb=state.get("best_bpb"),
        iteration=iteration,
        rng=random.Random(f"{ctx.seed}:{iteration}:{mechanism.record['target']}"),
        settings=MappingProxyType(dict(state.get("settings", {}))),
        ask_llm=ask,
        params=MappingProxyType(dict(mechanism.record.get("params", {}))),
        result=MappingProxyType(dict(result)) if result is not None else None,
    )


def run_mechanism(state: InnerState, ctx: InnerContext, mechanism: Mechanism,
                  result: dict[str, Any] | None = None) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Call the mechanism; return its checked output (None when refused or failed) and the call's trace event."""
    asks: list[dict[str, Any]] = []
    view = make_view(state, ctx, mechanism, asks, result)
    start = time.monotonic()
    output: dict[str, Any] | None = None
    error: str | None = None
    try:
        output = mechanism.fn(view)
        problems = (check_proposal(output, view) if mechanism.record["target"] == "propose"
                    else check_decision(output))
        if problems:
            error, output = "output refused: " + "; ".join(problems), None
    except Exception as e:  # noqa: BLE001 - any failure of a mechanism is contained and recorded
        from nodes.structured import LLMFatalError

        if isinstance(e, LLMFatalError):
            raise
        error = f"{type(e).__name__}: {e}"[:2000]
    event = {
        "mechanism": mechanism.id, "origin": mechanism.record.get("origin"), "target": mechanism.record["target"],
        "iteration": state.get("iteration", 0), "ok": error is None, "error": error, "llm_asks": len(asks),
        "asked": asks, "output": output, "seconds": round(time.monotonic() - start, 4),
        "changed_llm_proposal": bool(output and asks and output.get("changes") != asks[-1]["changes"]),
    }
    ctx.ledger.event("mechanism_call", **event)
    return output, event
