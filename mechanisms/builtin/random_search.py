"""Random search: a whole configuration drawn uniformly from the search space (the classical baseline)."""

from typing import Any

NAME = "random_search"
TARGET = "propose"
MAX_CHANGES = None  # a whole configuration per proposal, not 1-3 changes
DRAWS = 100


def propose(view: Any) -> dict[str, Any]:
    """The parameters of a uniform draw that differ from the incumbent (frozen ones keep the incumbent's value)."""
    frozen = set(view.frozen)
    for _ in range(DRAWS):
        # the space's rules between parameters (train.py's batch rule) repair the draw, as an HPO user encodes them
        draw = view.space.repair({**view.space.sample(view.rng), **{k: view.incumbent[k] for k in frozen}})
        changes = {k: v for k, v in draw.items() if k not in frozen and not _same(v, view.incumbent.get(k))}
        if changes and not view.check_changes(changes, max_changes=None):
            return {
                "changes": changes,
                "hypothesis": "random search: a configuration drawn uniformly from the search space",
                "expected_direction": "unknown: an independent random draw",
            }
    raise RuntimeError("random search: no admissible draw differs from the incumbent")


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b
