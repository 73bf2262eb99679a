"""The inner autoresearch loop (Level 1): propose → train → evaluate → decide → propose … → END.

`build_inner_graph` takes the mechanisms that run as `propose` and `decide`, so the outer loop injects a mechanism by
rebuilding the graph with it under the same node name: the injected code is the code that runs.

    python -m graphs.inner --iterations 10 --budget-s 60
"""

from __future__ import annotations

import sys
from pathlib import Path

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from nodes.context import InnerContext
from nodes.decide import make_decide, route_after_decide
from nodes.evaluate import evaluate
from nodes.mechanism_calls import Mechanism
from nodes.propose import make_propose, route_after_propose
from nodes.state import InnerState, MechanismRecord
from nodes.train import train

InnerGraph = CompiledStateGraph[InnerState, InnerContext, InnerState, InnerState]


def build_inner_graph(
    propose: Mechanism, decide: Mechanism | None = None
) -> StateGraph[InnerState, InnerContext, InnerState, InnerState]:
    builder = StateGraph(InnerState, context_schema=InnerContext)
    builder.add_node("propose", make_propose(propose))
    builder.add_node("train", train)
    builder.add_node("evaluate", evaluate)
    builder.add_node("decide", make_decide(decide))
    builder.add_edge(START, "propose")
    builder.add_conditional_edges("propose", route_after_propose, ["train", END])
    builder.add_edge("train", "evaluate")
    builder.add_edge("evaluate", "decide")
    builder.add_conditional_edges("decide", route_after_decide, ["propose", END])
    return builder


def inner_graph_for(
    propose: MechanismRecord, decide: MechanismRecord | None, run_dir: Path
) -> StateGraph[InnerState, InnerContext, InnerState, InnerState]:
    """The inner graph of these mechanism records as its `propose` and `decide` nodes (`decide` None: the greedy
    rule), rebuilt from the records alone, as a resumed run must."""
    from nodes.mechanism_loader import load_mechanism

    return build_inner_graph(load_mechanism(propose, run_dir), load_mechanism(decide, run_dir) if decide else None)


def default_graph() -> InnerGraph:
    """The inner graph with the default mechanisms, compiled without a checkpointer (for `langgraph dev`)."""
    from nodes.mechanism_loader import builtin_mechanism

    return build_inner_graph(builtin_mechanism("llm_greedy")).compile(name="inner")


if __name__ == "__main__":
    from graphs.cli import main_inner

    sys.exit(main_inner())
