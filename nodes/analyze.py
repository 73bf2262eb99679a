"""The `analyze` node (Level 2): what holds the search back, chosen among the findings the trace's figures support.

The figures (repeats, stagnation, untouched parameters, crashes, step size, fallbacks) are computed here; each finding
they support comes with its evidence, written from those figures. The LLM chooses one of them (an enum of the
supported findings, never free text about the run) and a mechanism idea; so an answer that is not about the run
cannot be recorded as the model's diagnosis. The embedded model picks the idea from a list too; a capable model may
add ideas of its own (they feed generate mode). Without a valid answer the first supported finding stands in,
recorded as `source: fallback`.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from typing import Any, Literal

from langgraph.runtime import Runtime
from pydantic import BaseModel, Field, create_model

from llm.structured import LLMBudgetExhausted
from mechanisms.space import SearchSpace
from nodes.context import OuterContext
from nodes.llm_proposer import compact_history, format_history
from nodes.mechanism_loader import mechanism_source
from nodes.prompts import ANALYZE_SYSTEM, ANALYZE_USER, COMPACT_ANALYZE_SYSTEM, COMPACT_ANALYZE_USER
from nodes.segment_stats import parameter_stats, repeated_proposals
from nodes.state import OuterState

STAGNATION = 3  # experiments without a new best that make "stagnation" a supported finding
SMALL_STEP = 0.08  # median step (share of a parameter's range) under which steps count as small
IDEAS = {
    "tabu": "tabu search over visited configurations",
    "diversify": "stagnation-triggered diversification",
    "anneal": "simulated annealing",
    "design": "orthogonal-array design over untested factors",
    "bandit": "UCB bandit over parameter groups",
}


@dataclass(frozen=True)
class Finding:
    """A diagnosis the trace supports: what holds the search back, the figures that show it, what could help."""

    id: str
    bottleneck: str
    evidence: str
    ideas: tuple[str, ...]  # keys of IDEAS


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


def step_sizes(experiments: list[dict[str, Any]], space: SearchSpace) -> list[float]:
    """Each proposal's distance from the best configuration at the time: its largest change as a share of the
    parameter's range (log-aware; another choice counts 1)."""
    sizes = []
    incumbent: dict[str, Any] | None = None
    for e in experiments:
        params = e.get("params", {})
        if incumbent is not None and e.get("changes"):
            sizes.append(space.distance(incumbent, params))
        if incumbent is None or e["status"] == "keep":
            incumbent = dict(params)
    return sizes


def findings(summary: dict[str, Any], experiments: list[dict[str, Any]], space: SearchSpace) -> list[Finding]:
    """The findings the figures support, the strongest first; "uneven effort" always stands."""
    out: list[Finding] = []
    n = summary["experiments"]
    if summary["repeated_configurations"]:
        out.append(
            Finding(
                "repeats",
                "the search revisits configurations it already tried",
                f"{summary['repeated_configurations']} of {n} experiments repeated an earlier configuration",
                ("tabu",),
            )
        )
    if summary["crashes"]:
        crashed = [", ".join(e.get("changes", {})) or "baseline" for e in experiments if e["status"] == "crash"]
        out.append(
            Finding(
                "crashes",
                "proposals crash the training",
                f"{summary['crashes']} of {n} experiments crashed (changed: {'; '.join(crashed[-3:])})",
                ("tabu", "bandit"),
            )
        )
    if summary["experiments_since_last_best"] >= STAGNATION:
        out.append(
            Finding(
                "stagnation",
                "the search has stagnated",
                f"no new best in the last {summary['experiments_since_last_best']} of {n} experiments",
                ("diversify", "anneal"),
            )
        )
    if summary["never_changed"]:
        never = summary["never_changed"]
        out.append(
            Finding(
                "untouched",
                "part of the space is never explored",
                f"{len(never)} free parameters never changed: {', '.join(never[:6])}{' ...' if len(never) > 6 else ''}",
                ("design", "bandit"),
            )
        )
    sizes = step_sizes(experiments, space)
    if len(sizes) >= 3 and statistics.median(sizes) < SMALL_STEP:
        out.append(
            Finding(
                "small_steps",
                "steps are too small to leave the neighbourhood of the best",
                f"median step {statistics.median(sizes):.0%} of a parameter's range over {len(sizes)} proposals",
                ("diversify", "design"),
            )
        )
    if summary["fallback_proposals"]:
        out.append(
            Finding(
                "fallbacks",
                "the proposer often gives no valid proposal",
                f"{summary['fallback_proposals']} of {n} experiments were the recorded fallback step",
                ("design", "bandit"),
            )
        )
    stats = parameter_stats(experiments)
    tried = sorted(stats.items(), key=lambda kv: -kv[1]["tried"])[:3]
    out.append(
        Finding(
            "uneven",
            "effort is spread evenly over parameters of unequal value",
            "tried/kept: " + (", ".join(f"{k} {v['tried']}/{v['kept']}" for k, v in tried) or "nothing changed yet"),
            ("bandit",),
        )
    )
    return out


def finding_schema(supported: list[Finding], compact: bool) -> type[BaseModel]:
    """The answer: one of the supported findings (an enum) and ideas: from the list (compact) or the model's own."""
    ids = tuple(f.id for f in supported)
    fields: dict[str, Any] = {"finding": (Literal[ids], Field(description="what holds the search back"))}
    if compact:
        fields["idea"] = (Literal[tuple(IDEAS)], Field(description="the mechanism idea to try"))
    else:
        fields["ideas"] = (
            list[str],
            Field(min_length=1, max_length=4, description="1 to 4 mechanism ideas from adjacent fields"),
        )
    return create_model("Diagnosis", **fields)


def format_findings(supported: list[Finding]) -> str:
    return "\n".join(f"{f.id}: {f.bottleneck} ({f.evidence}); ideas: {', '.join(f.ideas)}" for f in supported)


def diagnosis_of(finding: Finding, ideas: list[str], source: str) -> dict[str, Any]:
    return {"finding": finding.id, "bottleneck": finding.bottleneck, "evidence": finding.evidence, "ideas": ideas,
            "source": source}  # fmt: skip


def fallback_diagnosis(
    summary: dict[str, Any], experiments: list[dict[str, Any]], space: SearchSpace
) -> dict[str, Any]:
    """The strongest supported finding with its own ideas, used when the LLM's answer is not valid."""
    first = findings(summary, experiments, space)[0]
    return diagnosis_of(first, [IDEAS[i] for i in first.ideas], "fallback")


def analyze(state: OuterState, runtime: Runtime[OuterContext]) -> dict[str, Any]:
    ctx = runtime.context
    if not ctx.acts("mechanism") or state.get("stop_reason") or state.get("on_trial"):
        return {}
    inner = state["inner"]
    experiments = inner.get("experiments", [])
    space = ctx.inner.space
    summary = trace_summary(experiments, space.free_names(inner.get("settings", {}).get("frozen", [])))
    supported = findings(summary, experiments, space)
    compact = ctx.inner.compact
    if compact:
        system = COMPACT_ANALYZE_SYSTEM
        prompt = COMPACT_ANALYZE_USER.format(
            findings=format_findings(supported),
            ideas="\n".join(f"{key}: {text}" for key, text in IDEAS.items()),
            history=compact_history(experiments),
        )
    else:
        active = state["active"]
        system = ANALYZE_SYSTEM
        prompt = ANALYZE_USER.format(
            graph=ctx.inner_graph_mermaid,
            mechanism=active["id"],
            source=mechanism_source(active, ctx.inner.ledger.root),
            summary=json.dumps(summary),
            stats=json.dumps(parameter_stats(experiments)),
            history=format_history(experiments),
            findings=format_findings(supported),
        )
    try:
        answer = ctx.inner.ask(
            finding_schema(supported, compact),
            system,
            prompt,
            node="analyze",
            level="L2",
            by_construction=compact,
            cycle=state.get("cycle", 0),
        )
    except LLMBudgetExhausted as e:
        return {"stop_reason": str(e)}
    value: Any = answer.value
    if value is None:
        diagnosis = fallback_diagnosis(summary, experiments, space)
    else:
        chosen = next(f for f in supported if f.id == value.finding)
        ideas = [IDEAS[value.idea]] if compact else [str(i)[:200] for i in value.ideas]
        diagnosis = diagnosis_of(chosen, ideas, "llm")
    diagnosis["trace_summary"] = summary
    diagnosis["supported"] = [f.id for f in supported]
    cycle = state.get("cycle", 0)
    ctx.inner.ledger.event(  # one event per cycle: a replay after a kill does not write it twice
        "analyze", event_id=f"cycle-{cycle:03d}:analyze", cycle=cycle, diagnosis=diagnosis, errors=answer.errors
    )
    return {"diagnosis": diagnosis, "repairs": 0, "validation": None}
