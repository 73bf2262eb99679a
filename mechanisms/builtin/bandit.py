"""A bandit over parameter groups: UCB1 or Thompson sampling on recorded improvements, then an LLM ask in the group."""

import math
from typing import Any

NAME = "bandit"
TARGET = "propose"
PARAMS: dict[str, dict[str, Any]] = {
    "policy": {"kind": "choice", "choices": ["ucb1", "thompson"], "default": "ucb1"},
    "c": {"kind": "float", "low": 0.0, "high": 5.0, "default": 1.0},
    "scale": {"kind": "float", "low": 0.01, "high": 0.5, "default": 0.1},
}


def _param(view: Any, key: str) -> Any:
    return view.params.get(key, PARAMS[key]["default"])


def arm_stats(view: Any, groups: dict[str, tuple[str, ...]]) -> dict[str, list[float]]:
    """Per group: the rewards of the experiments that touched it, in trace order.

    The reward of an experiment is its improvement over the best val_bpb before it (0 when worse or crashed),
    divided by the largest improvement in the trace, so rewards lie in [0, 1].
    """
    member = {name: group for group, names in groups.items() for name in names}
    best = None
    raw: list[tuple[set[str], float]] = []
    for record in view.trace:
        bpb = record.get("val_bpb")
        ok = record.get("status") != "crash" and bpb is not None
        gain = max(0.0, best - bpb) if ok and best is not None else 0.0
        touched = {member[name] for name in record.get("changes", {}) if name in member}
        if touched:
            raw.append((touched, gain))
        if ok and (best is None or bpb < best):
            best = bpb
    top = max((gain for _, gain in raw), default=0.0)
    stats: dict[str, list[float]] = {group: [] for group in groups}
    for touched, gain in raw:
        for group in touched:
            stats[group].append(gain / top if top > 0 else 0.0)
    return stats


def choose_group(view: Any, stats: dict[str, list[float]]) -> tuple[str, str]:
    untried = [group for group, rewards in stats.items() if not rewards]
    if untried:
        return untried[0], "untried group"
    if _param(view, "policy") == "thompson":
        draws = {}
        for group, rewards in stats.items():
            wins = sum(rewards)
            draws[group] = view.rng.betavariate(1 + wins, 1 + len(rewards) - wins)
        group = max(draws, key=lambda g: draws[g])
        return group, f"Thompson draw {draws[group]:.3f}"
    total = sum(len(rewards) for rewards in stats.values())
    scores = {
        group: sum(rewards) / len(rewards) + _param(view, "c") * math.sqrt(2 * math.log(total) / len(rewards))
        for group, rewards in stats.items()
    }
    group = max(scores, key=lambda g: scores[g])
    return group, f"UCB1 score {scores[group]:.3f}"


def propose(view: Any) -> dict[str, Any]:
    groups = view.space.groups(view.settings.get("frozen", ()))
    if not groups:
        raise RuntimeError("bandit: every parameter is frozen")
    stats = arm_stats(view, groups)
    group, why = choose_group(view, stats)
    names = list(groups[group])
    guidance = f"{view.settings.get('guidance', '')}\nChange only parameters of the {group} group: {', '.join(names)}."
    proposal = view.ask_llm(guidance.strip(), constraints={"only": names})
    changes = proposal.get("changes", {})
    if not view.check_changes(changes) and all(name in names for name in changes):
        return proposal
    name = view.rng.choice(names)
    step = view.space.neighbour(view.incumbent, view.rng, [name], _param(view, "scale"))
    return {
        "changes": step,
        "hypothesis": f"bandit chose the {group} group ({why}); the LLM answer left it, so step {name}",
        "expected_direction": "unknown: a numeric step in the chosen group",
    }
