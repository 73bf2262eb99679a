"""The `propose` node: the active propose mechanism chooses the next experiment (iteration 0 is the baseline)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from langgraph.graph import END
from langgraph.runtime import Runtime

from nodes.context import InnerContext
from nodes.llm_proposer import ask_llm
from nodes.mechanism_calls import Mechanism, run_mechanism
from nodes.state import InnerState
from nodes.structured import LLMBudgetExhausted

Node = Callable[[InnerState, Runtime[InnerContext]], dict[str, Any]]


def experiment_id(iteration: int) -> str:
    return f"e{iteration:04d}"


def make_propose(mechanism: Mechanism) -> Node:
    """The node that runs `mechanism` as the inner graph's `propose` step."""

    def propose(state: InnerState, runtime: Runtime[InnerContext]) -> dict[str, Any]:
        ctx = runtime.context
        iteration = state.get("iteration", 0)
        eid = experiment_id(iteration)
        incumbent = dict(state.get("incumbent", {}))
        if not state.get("experiments"):
            pending = {
                "id": eid,
                "params": incumbent,
                "changes": {},
                "hypothesis": "baseline configuration",
                "expected_direction": "",
                "mechanism": "baseline",
                "source": "baseline",
            }
        else:
            try:
                proposal, _ = run_mechanism(state, ctx, mechanism)
                if proposal is None:  # failed or refused: recorded; the default proposer answers this iteration
                    proposal = {**ask_llm(state, ctx), "mechanism_failed": True}
            except LLMBudgetExhausted as e:
                ctx.ledger.event("stop", iteration=iteration, reason=str(e))
                return {"pending": None, "stop_reason": str(e)}
            changes = dict(proposal.get("changes", {}))
            pending = {
                "id": eid,
                "params": {**incumbent, **changes},
                "changes": changes,
                "edits": list(proposal.get("edits", [])),
                "hypothesis": str(proposal.get("hypothesis", "")),
                "expected_direction": str(proposal.get("expected_direction", "")),
                "mechanism": mechanism.id,
                "source": proposal.get("source", "mechanism"),
                "mechanism_failed": bool(proposal.get("mechanism_failed")),
            }
        ctx.ledger.event(
            "propose",
            experiment=eid,
            iteration=iteration,
            **{k: v for k, v in pending.items() if k not in ("id", "params")},
        )
        return {"pending": pending}

    propose.__name__ = f"propose[{mechanism.id}]"
    return propose


def route_after_propose(state: InnerState) -> Literal["train", "__end__"]:
    return "train" if state.get("pending") else END
