"""Tabu search: refuse proposals near recently visited configurations, re-ask the LLM, then perturb the incumbent."""

from typing import Any

NAME = "tabu"
TARGET = "propose"
PARAMS: dict[str, dict[str, Any]] = {
    "radius": {"kind": "float", "low": 0.0, "high": 0.5, "default": 0.05},
    "tenure": {"kind": "int", "low": 1, "high": 50, "default": 8},
    "retries": {"kind": "int", "low": 0, "high": 5, "default": 2},
    "scale": {"kind": "float", "low": 0.01, "high": 0.5, "default": 0.15},
}
FALLBACK_TRIES = 200


def _param(view: Any, key: str) -> Any:
    return view.params.get(key, PARAMS[key]["default"])


def tabu_list(view: Any) -> list[dict[str, Any]]:
    """Full configurations of the incumbent and of the last ``tenure`` experiments."""
    recent = [dict(record["params"]) for record in view.trace[-_param(view, "tenure") :] if record.get("params")]
    return [dict(view.incumbent), *recent]


def is_tabu(view: Any, changes: Any, visited: list[dict[str, Any]]) -> bool:
    config = view.space.apply(view.incumbent, changes)
    return any(view.space.distance(config, seen) <= _param(view, "radius") for seen in visited)


def _describe(changes: Any) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in sorted(changes.items()))


def propose(view: Any) -> dict[str, Any]:
    visited = tabu_list(view)
    guidance = view.settings.get("guidance", "")
    refused: list[str] = []
    for _ in range(_param(view, "retries") + 1):
        proposal = view.ask_llm(guidance)
        changes = proposal.get("changes", {})
        if not view.check_changes(changes) and not is_tabu(view, changes, visited):
            return proposal
        refused.append(_describe(changes) if isinstance(changes, dict) else repr(changes))
        recent = [_describe(record.get("changes", {})) for record in view.trace[-_param(view, "tenure") :]]
        guidance = (
            f"{view.settings.get('guidance', '')}\nTabu: these changes were tried recently or are too close to "
            f"them; propose something clearly different (more than {_param(view, 'radius'):.0%} of a range away). "
            f"Recent: {'; '.join(r for r in recent if r) or 'none'}. Refused: {'; '.join(refused)}."
        ).strip()
    return fallback(view, visited, len(refused))


def fallback(view: Any, visited: list[dict[str, Any]], refused: int) -> dict[str, Any]:
    """A seeded perturbation of the incumbent outside the tabu region, with a growing step."""
    free = list(view.free_names)
    if not free:
        raise RuntimeError("tabu: every parameter is frozen")
    for attempt in range(FALLBACK_TRIES):
        scale = min(1.0, _param(view, "scale") * (1 + attempt / 20))
        names = view.rng.sample(free, min(len(free), view.rng.choice((1, 2))))
        changes = view.space.neighbour(view.incumbent, view.rng, names, scale)
        if changes and not view.check_changes(changes) and not is_tabu(view, changes, visited):
            return {
                "changes": changes,
                "hypothesis": f"tabu fallback after {refused} refused LLM proposals: explore {_describe(changes)}",
                "expected_direction": "unknown: diversification away from recently visited configurations",
            }
    raise RuntimeError("tabu: no admissible proposal outside the tabu region")
