"""Plateau escape: delegate to the LLM until `patience` experiments pass without improvement, then diversify."""

from typing import Any

NAME = "stagnation"
TARGET = "propose"
PARAMS: dict[str, dict[str, Any]] = {
    "patience": {"kind": "int", "low": 1, "high": 50, "default": 5},
    "big_scale": {"kind": "float", "low": 0.05, "high": 1.0, "default": 0.3},
    "untouched": {"kind": "int", "low": 1, "high": 10, "default": 3},
}
MODES = ("untouched", "larger steps", "restart from the best")


def _param(view: Any, key: str) -> Any:
    return view.params.get(key, PARAMS[key]["default"])


def stalled_for(trace: Any) -> int:
    """Experiments since the last one that improved the best val_bpb (all of them when none did)."""
    best, since = None, 0
    for record in trace:
        bpb = record.get("val_bpb")
        if record.get("status") != "crash" and bpb is not None and (best is None or bpb < best):
            best, since = bpb, 0
        else:
            since += 1
    return since


def least_touched(view: Any) -> list[str]:
    """Free names ordered by how often the trace changed them (fewest first, declaration order on ties)."""
    counts = {name: 0 for name in view.free_names}
    for record in view.trace:
        for name in record.get("changes", {}):
            if name in counts:
                counts[name] += 1
    return sorted(counts, key=lambda name: counts[name])


def propose(view: Any) -> dict[str, Any]:
    stalled = stalled_for(view.trace)
    guidance = view.settings.get("guidance", "")
    if stalled < _param(view, "patience"):
        return view.ask_llm(guidance)
    mode = MODES[(stalled - _param(view, "patience")) % len(MODES)]
    note = f"no improvement for {stalled} experiments: diversify ({mode})"
    if mode == "untouched":
        names = least_touched(view)[: _param(view, "untouched")]
        proposal = view.ask_llm(
            f"{guidance}\nThe search is stuck: {note}. Change only: {', '.join(names)}.".strip(),
            constraints={"only": names},
        )
        if not view.check_changes(proposal.get("changes", {})) and all(n in names for n in proposal["changes"]):
            return proposal
        picks = names[:1]
    elif mode == "larger steps":
        pool = least_touched(view)[: max(2, _param(view, "untouched"))]
        picks = view.rng.sample(pool, min(2, len(pool)))
    else:
        free = list(view.free_names)
        picks = view.rng.sample(free, min(len(free), view.rng.choice((2, 3))))
    changes = view.space.neighbour(view.incumbent, view.rng, picks, _param(view, "big_scale"))
    return {
        "changes": changes,
        "hypothesis": f"{note}: move {', '.join(sorted(changes))} by a large step from the best configuration",
        "expected_direction": "unknown: diversification to leave a plateau",
    }
