"""The `decide` node: keep or discard the experiment just trained, record it, and choose whether to go on.

A crash is never kept. After a discard or a crash the incumbent stays what it was: the best configuration so far,
never the last one tried. The decision itself comes from the active `decide` mechanism (greedy by default).
"""

from __future__ import annotations

import math
from typing import Any, Literal, cast

from langgraph.graph import END
from langgraph.runtime import Runtime

from nodes.context import InnerContext
from nodes.mechanism_calls import Mechanism, run_mechanism
from nodes.propose import Node
from nodes.state import InnerState


def experiment_record(item: dict[str, Any], outcome: dict[str, Any], status: str, reason: str) -> dict[str, Any]:
    result = outcome.get("result", {}) if outcome.get("status") == "ok" else {}
    changes = item.get("changes", {})
    edits = item.get("edits", [])
    description = ", ".join(f"{k}={v}" for k, v in changes.items()) or (
        f"{len(edits)} code edit(s): {item.get('hypothesis', '')[:80]}" if edits else "baseline"
    )
    return {
        "id": item["id"],
        "iteration": item["iteration"],
        "params": item.get("params", {}),
        "changes": changes,
        "edits": edits,
        "hypothesis": item.get("hypothesis", ""),
        "expected_direction": item.get("expected_direction", ""),
        "mechanism": item.get("mechanism", ""),
        "proposal_source": item.get("source", ""),
        "val_bpb": result.get("val_bpb"),
        "peak_memory_mb": result.get("peak_memory_mb"),
        "training_seconds": result.get("training_seconds"),
        "timing": result.get("timing"),  # the phases of the trial's wall time (start-up, warm-up, evaluation, ...)
        "num_steps": result.get("num_steps"),
        "split_sha256": result.get("split_sha256"),
        "seconds": outcome.get("wall_seconds"),
        "other_cpu_share": outcome.get("other_cpu_share"),
        "status": status,
        "reason": reason,
        "error": outcome.get("error"),
        "description": description,
        **({"surrogate": outcome["surrogate"]} if outcome.get("surrogate") else {}),  # val_bpb from a fitted model
        **({"contended": outcome["contended"]} if outcome.get("contended") else {}),  # attempts trained again
    }


def greedy_decision(val_bpb: float, best: float, margin: float) -> dict[str, Any]:
    """autoresearch's rule: keep only a result that beats the best by more than the noise margin."""
    if val_bpb < best - margin:
        return {"keep": True, "reason": f"{val_bpb:.6f} beats the best {best:.6f} by more than {margin:g}"}
    return {"keep": False, "reason": f"{val_bpb:.6f} does not beat the best {best:.6f} by more than {margin:g}"}


def make_decide(mechanism: Mechanism | None) -> Node:
    """The node that runs `mechanism` (None: the greedy rule) as the inner graph's `decide` step."""

    def decide(state: InnerState, runtime: Runtime[InnerContext]) -> dict[str, Any]:
        return decide_step(state, runtime.context, mechanism)

    decide.__name__ = f"decide[{mechanism.id if mechanism else 'greedy'}]"
    return decide


def decide_step(state: InnerState, ctx: InnerContext, mechanism: Mechanism | None) -> dict[str, Any]:
    """Decide each experiment of the batch in id order, each against the best so far: the ledger and the
    decisions do not depend on the order in which parallel trials finished."""
    current: dict[str, Any] = dict(state)
    for item, outcome in sorted(
        zip(state.get("batch", []), state.get("outcomes", []), strict=True), key=lambda pair: pair[0]["id"]
    ):
        current.update(decide_one(current, ctx, mechanism, item, outcome))
    updates: dict[str, Any] = {
        k: current[k] for k in ("experiments", "incumbent", "incumbent_id", "best_bpb", "best_id") if k in current
    }
    updates.update(batch=[], outcomes=[], iteration=state.get("iteration", 0) + len(state.get("batch", [])))
    ctx.ledger.write_results(updates["experiments"])
    stop = stop_reason(cast(InnerState, {**state, **updates}), ctx)
    if stop:
        updates["stop_reason"] = stop
    return updates


def decide_one(
    state: dict[str, Any], ctx: InnerContext, mechanism: Mechanism | None, item: dict[str, Any], outcome: dict[str, Any]
) -> dict[str, Any]:
    experiments = list(state.get("experiments", []))
    best = state.get("best_bpb")
    if outcome.get("status") != "ok":
        status, reason = "crash", str(outcome.get("error", "crashed"))
    elif best is None:
        status, reason = "keep", "baseline: the reference every proposal is measured against"
    else:
        decision = None
        if mechanism is not None:
            judged = {**state, "iteration": item["iteration"]}
            decision, _ = run_mechanism(
                cast(InnerState, judged),
                ctx,
                mechanism,
                result=experiment_record(item, outcome, "pending", ""),
            )
        decision = decision or greedy_decision(outcome["result"]["val_bpb"], best, ctx.noise_margin)
        status, reason = ("keep" if decision["keep"] else "discard"), str(decision["reason"])
    record = experiment_record(item, outcome, status, reason)
    experiments.append(record)
    updates: dict[str, Any] = {"experiments": experiments}
    bpb = record["val_bpb"]
    if status == "keep":
        updates.update(incumbent=record["params"], incumbent_id=record["id"])
    if status == "keep" and isinstance(bpb, float) and (best is None or bpb < best):
        # Only a kept result can become the best: one within the noise margin is discarded and must not move the
        # bar the next proposal is measured against while the incumbent stays behind.
        updates.update(best_bpb=bpb, best_id=record["id"])
    ctx.ledger.event("experiment", event_id=f"{record['id']}:decide", **record)
    _progress_line(ctx, record, updates.get("best_bpb", best))
    return updates


def stop_reason(state: InnerState, ctx: InnerContext) -> str | None:
    experiments = state.get("experiments", [])
    if experiments and len(experiments) == 1 and experiments[0]["status"] == "crash":
        return "the baseline configuration crashed: fix train.py or the trainer settings before searching"
    if state.get("iteration", 0) >= state.get("stop_at", math.inf):
        return "iterations done"
    if ctx.budget.exhausted:
        return f"LLM budget exhausted ({ctx.budget.summary()})"
    if ctx.past_deadline():
        return "time budget of the run exhausted"
    return None


def route_after_decide(state: InnerState) -> Literal["propose", "__end__"]:
    return END if state.get("stop_reason") else "propose"  # type: ignore[return-value]  # langgraph types END as str


def _progress_line(ctx: InnerContext, record: dict[str, Any], best: float | None) -> None:
    colour = {"keep": "green", "discard": "yellow", "crash": "red"}[record["status"]]
    bpb = f"{record['val_bpb']:.6f}" if isinstance(record["val_bpb"], float) else "   —    "
    best_text = f"{best:.6f}" if best is not None else "—"
    ctx.console.print(
        f"[bold]{record['id']}[/] [{colour}]{record['status']:<7}[/] val_bpb {bpb}  best {best_text}  "
        f"{record['mechanism']:<20} {record['description'][:70]}",
        soft_wrap=True,
        highlight=False,
    )
