"""The graphs that `langgraph.json` exports for LangGraph Studio / `langgraph dev` (compiled without a checkpointer:
the API server brings its own; the command line attaches SqliteSaver)."""

from graphs.inner import default_graph as _inner_default
from graphs.outer import default_graph as _outer_default

inner = _inner_default()
bilevel = _outer_default()
