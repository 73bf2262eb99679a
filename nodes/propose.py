"""The `propose` node: the active propose mechanism chooses the next experiment (iteration 0 is the baseline).

With a batch size k > 1 the mechanism is called k times; each call sees the proposals already in the batch as
`running` experiments of its trace, so a search that avoids what it has tried also avoids what is being tried. With a
trial pipeline in the context, each proposal starts training as soon as it is made (`nodes.train.start_early`).
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

from langgraph.graph import END
from langgraph.runtime import Runtime

from llm.structured import LLMBudgetExhausted
from mechanisms.builtin.local_search import config_key, tried_configs
from nodes.context import InnerContext
from nodes.llm_proposer import allowed_names, ask_llm, fallback_proposal
from nodes.mechanism_calls import Mechanism, run_mechanism
from nodes.state import InnerState
from nodes.train import start_early


class Node(Protocol):
    """An inner-graph node: a plain function of the state and the runtime (its context), returning an update."""

    def __call__(self, state: InnerState, runtime: Runtime[InnerContext]) -> dict[str, Any]: ...


def experiment_id(iteration: int) -> str:
    return f"e{iteration:04d}"


def running_record(item: dict[str, Any]) -> dict[str, Any]:
    """How a proposal of the current batch appears in the trace the next call of the batch sees."""
    return {
        "id": item["id"],
        "iteration": item["iteration"],
        "params": item["params"],
        "changes": item["changes"],
        "hypothesis": item["hypothesis"],
        "val_bpb": None,
        "status": "running",
        "mechanism": item["mechanism"],
        "description": ", ".join(f"{k}={v}" for k, v in item["changes"].items()),
    }


def one_proposal(state: InnerState, ctx: InnerContext, mechanism: Mechanism) -> dict[str, Any]:
    iteration = state.get("iteration", 0)
    incumbent = dict(state.get("incumbent", {}))
    proposal, _ = run_mechanism(state, ctx, mechanism)
    if proposal is None:  # failed or refused: recorded; the default proposer answers this iteration
        proposal = {**ask_llm(state, ctx), "mechanism_failed": True}
    changes = dict(proposal.get("changes", {}))
    if not proposal.get("edits") and config_key(ctx.space, {**incumbent, **changes}) in tried_configs(
        ctx.space, state.get("experiments", [])
    ):  # training is deterministic for the run's seed: a configuration is never trained twice
        why = f"{mechanism.id} proposed a configuration already trained ({', '.join(map(str, changes.items()))})"
        frozen = list(state.get("settings", {}).get("frozen", []))
        proposal = fallback_proposal(state, ctx, why, allowed_names(ctx.space, frozen, None))
        changes = dict(proposal["changes"])
    return {
        "id": experiment_id(iteration),
        "iteration": iteration,
        "params": {**incumbent, **changes},
        "changes": changes,
        "edits": list(proposal.get("edits", [])),
        "hypothesis": str(proposal.get("hypothesis", "")),
        "expected_direction": str(proposal.get("expected_direction", "")),
        "mechanism": mechanism.id,
        "source": proposal.get("source", "mechanism"),
        "mechanism_failed": bool(proposal.get("mechanism_failed")),
    }


def record_proposal(ctx: InnerContext, item: dict[str, Any]) -> None:
    fields: dict[str, Any] = {k: v for k, v in item.items() if k not in ("id", "params")}
    ctx.ledger.event("propose", experiment=item["id"], **fields)


def make_propose(mechanism: Mechanism) -> Node:
    """The node that runs `mechanism` as the inner graph's `propose` step."""

    def propose(state: InnerState, runtime: Runtime[InnerContext]) -> dict[str, Any]:
        ctx = runtime.context
        iteration = state.get("iteration", 0)
        if not state.get("experiments"):
            baseline = {
                "id": experiment_id(iteration),
                "iteration": iteration,
                "params": dict(state.get("incumbent", {})),
                "changes": {},
                "edits": [],
                "hypothesis": "baseline configuration",
                "expected_direction": "",
                "mechanism": "baseline",
                "source": "baseline",
            }
            record_proposal(ctx, baseline)
            return {"batch": [baseline], "outcomes": []}
        size = max(1, min(ctx.batch, state.get("stop_at", iteration + 1) - iteration))
        batch: list[dict[str, Any]] = []
        try:
            for j in range(size):
                running = [running_record(b) for b in batch]
                view_state = {
                    **state,
                    "iteration": iteration + j,
                    "experiments": [*state.get("experiments", []), *running],
                }
                batch.append(one_proposal(view_state, ctx, mechanism))  # type: ignore[arg-type]
                record_proposal(ctx, batch[-1])
                start_early(batch[-1], state, ctx)  # with a trial pipeline: it trains while the next is asked
        except LLMBudgetExhausted as e:
            ctx.ledger.event("stop", iteration=iteration, reason=str(e))
            if not batch:
                return {"batch": [], "stop_reason": str(e)}
        return {"batch": batch, "outcomes": []}

    propose.__name__ = f"propose[{mechanism.id}]"
    return propose


def route_after_propose(state: InnerState) -> Literal["train", "__end__"]:
    return "train" if state.get("batch") else END  # type: ignore[return-value]  # langgraph types END as str
