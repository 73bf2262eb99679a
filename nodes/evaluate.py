"""The `evaluate` node: read the trainer's result and refuse one that the locked evaluator did not produce."""

from __future__ import annotations

import math
from typing import Any, TypeGuard

from langgraph.runtime import Runtime

from nodes.context import InnerContext
from nodes.state import InnerState
from trials.launcher import OVERRUN_FACTOR


def check_result(
    result: dict[str, Any], evaluator_sha256: Any, ctx: InnerContext, expected_split: str | None
) -> str | None:
    """Why `result` must be refused, or None when it is a genuine result of this run's evaluator and split.
    `evaluator_sha256` is the hash of the evaluator file the training ran with, computed by the executor in this
    process; what the training reports of it in `result` is never what is checked."""

    def finite(value: Any) -> TypeGuard[float]:  # a real number: not a bool, not NaN or infinite
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

    if not isinstance(result, dict):
        return f"the result is a {type(result).__name__}, not a JSON object"
    bpb = result.get("val_bpb")
    if not finite(bpb) or bpb <= 0:
        return f"val_bpb is not a positive finite number: {str(bpb)[:80]!r}"
    if evaluator_sha256 != ctx.evaluator_sha256:
        return (
            "the result was not produced by the locked evaluator (the sha256 of the evaluator file it ran with differs)"
        )
    if expected_split is not None and result.get("split_sha256") != expected_split:
        return "the result was measured on another data split (split sha256 differs)"
    budget = ctx.trainer.budget_s
    if "budget_s" in result and result["budget_s"] != budget:
        return f"the result reports a budget of {str(result['budget_s'])[:40]} s, not this run's {budget} s"
    seconds, steps = result.get("training_seconds"), result.get("num_steps")
    if not finite(seconds) or seconds <= 0:
        return f"training ran {str(seconds)[:40]} s for a budget of {budget} s"
    # The clock is read between steps, so the last step may overrun the budget: allow two mean steps more.
    step_s = seconds / steps if isinstance(steps, int) and not isinstance(steps, bool) and steps > 0 else 0.0
    if seconds > budget * OVERRUN_FACTOR + 1 + 2 * step_s:
        return f"training ran {str(seconds)[:40]} s in {steps} steps for a budget of {budget} s"
    return None


def evaluate(state: InnerState, runtime: Runtime[InnerContext]) -> dict[str, Any]:
    ctx = runtime.context
    baseline = next((e for e in state.get("experiments", []) if e.get("split_sha256")), None)
    expected_split = ctx.split_sha256 or (baseline or {}).get("split_sha256")
    checked = []
    for item, raw in zip(state.get("batch", []), state.get("outcomes", []), strict=True):
        outcome = dict(raw)
        if outcome.get("ok"):
            refusal = check_result(outcome["result"], outcome.get("evaluator_sha256"), ctx, expected_split)
            if refusal:
                outcome.update(ok=False, error=f"result refused: {refusal}", refused=True)
        status = "ok" if outcome.get("ok") else "crash"
        expected_split = expected_split or outcome.get("result", {}).get("split_sha256")  # the baseline's split
        ctx.ledger.event(
            "evaluate",
            event_id=f"{item['id']}:evaluate",
            experiment=item["id"],
            status=status,
            val_bpb=outcome["result"].get("val_bpb") if status == "ok" else None,
            error=outcome.get("error"),
        )
        checked.append({**outcome, "status": status})
    return {"outcomes": checked}
