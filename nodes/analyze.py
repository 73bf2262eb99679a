"""The `analyze` node (Level 2): the LLM reads the inner loop's code and trace and diagnoses what holds the search
back. The trace's own figures (repeats, stagnation, untouched parameters, crashes) are computed here and given to it,
and stand in as the diagnosis when the model gives no valid one."""

from __future__ import annotations

import json
from typing import Any

from langgraph.runtime import Runtime
from pydantic import BaseModel, Field

from nodes.context import OuterContext
from nodes.llm_proposer import format_history
from nodes.mechanism_loader import mechanism_source
from nodes.prompts import ANALYZE_SYSTEM, ANALYZE_USER
from nodes.segment_stats import parameter_stats, repeated_proposals
from nodes.state import OuterState
from nodes.structured import LLMBudgetExhausted


class Diagnosis(BaseModel):
    bottleneck: str = Field(description="what holds the search back, in one sentence")
    evidence: str = Field(description="figures from the trace that show it")
    ideas: list[str] = Field(description="1 to 4 mechanism ideas from adjacent fields", min_length=1, max_length=4)


def trace_summary(experiments: list[dict[str, Any]], free: tuple[str, ...]) -> dict[str, Any]:
    """Figures of the search itself: what an analyst would check first."""
    since_best = 0
    best: float | None = None
    for e in experiments:
        bpb = e.get("val_bpb")
        if e["status"] != "crash" and isinstance(bpb, float) and (best is None or bpb < best):
            best, since_best = bpb, 0
        else:
            since_best += 1
    touched = {n for e in experiments for n in e.get("changes", {})}
    return {
        "experiments": len(experiments),
        "kept": sum(e["status"] == "keep" for e in experiments),
        "crashes": sum(e["status"] == "crash" for e in experiments),
        "repeated_configurations": repeated_proposals(experiments),
        "experiments_since_last_best": since_best,
        "never_changed": sorted(set(free) - touched),
        "fallback_proposals": sum(e.get("proposal_source") == "fallback" for e in experiments),
    }


def fallback_diagnosis(summary: dict[str, Any]) -> dict[str, Any]:
    """A diagnosis from the figures alone, used when the LLM's answer is not valid."""
    if summary["repeated_configurations"]:
        bottleneck, ideas = (
            "the search revisits configurations it already tried",
            ["tabu search over visited configurations"],
        )
    elif summary["experiments_since_last_best"] >= 3:
        bottleneck, ideas = "the search has stagnated", ["stagnation-triggered diversification", "simulated annealing"]
    elif summary["never_changed"]:
        bottleneck, ideas = "part of the space is never explored", ["orthogonal-array design over untested factors"]
    else:
        bottleneck, ideas = "effort is spread evenly over parameters of unequal value", ["UCB bandit over groups"]
    return {"bottleneck": bottleneck, "evidence": json.dumps(summary), "ideas": ideas, "source": "fallback"}


def analyze(state: OuterState, runtime: Runtime[OuterContext]) -> dict[str, Any]:
    ctx = runtime.context
    if not ctx.acts("mechanism") or state.get("stop_reason") or state.get("on_trial"):
        return {}
    inner = state["inner"]
    experiments = inner.get("experiments", [])
    summary = trace_summary(experiments, ctx.inner.space.free_names(inner.get("settings", {}).get("frozen", [])))
    active = state["active"]
    prompt = ANALYZE_USER.format(
        graph=ctx.inner_graph_mermaid,
        mechanism=active["id"],
        source=mechanism_source(active, ctx.inner.ledger.root),
        summary=json.dumps(summary),
        stats=json.dumps(parameter_stats(experiments)),
        history=format_history(experiments),
    )
    try:
        answer = ctx.inner.ask(
            Diagnosis, ANALYZE_SYSTEM, prompt, node="analyze", level="L2", cycle=state.get("cycle", 0)
        )
    except LLMBudgetExhausted as e:
        return {"stop_reason": str(e)}
    diagnosis = (
        {**answer.value.model_dump(), "source": "llm"} if answer.value is not None else fallback_diagnosis(summary)
    )
    diagnosis["trace_summary"] = summary
    ctx.inner.ledger.event("analyze", cycle=state.get("cycle", 0), diagnosis=diagnosis, errors=answer.errors)
    return {"diagnosis": diagnosis, "repairs": 0, "validation": None}
