"""Local search: a seeded one-parameter step from the incumbent, never to a configuration already tried.

The step is drawn uniformly among the steps the LLM proposer offers its model (`SearchSpace.steps`: x0.5 ... x2, -2 ...
+2 grid steps, the other choices), so this is the LLM proposer's recorded fallback on its own: the ablation's `local`
group, which measures what the model's choice adds over chance. When every such step was tried already, a Gaussian
step of growing width in unit space looks further out.
"""

import json
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

NAME = "local_search"
TARGET = "propose"
WIDE_TRIES = 200  # Gaussian steps tried when every listed step leads to a tried configuration


def config_key(space: Any, params: Mapping[str, Any]) -> str:
    """A configuration as a canonical string (defaults filling gaps): two experiments with the same key train the
    same thing, and training is deterministic for a run's seed."""
    return json.dumps([[p.name, params.get(p.name, p.default)] for p in space.params])


def tried_configs(space: Any, trace: Iterable[Mapping[str, Any]]) -> set[str]:
    """Keys of every configuration in ``trace`` (running and crashed ones too); code edits make an experiment
    something else than its constants, so those are left out."""
    return {config_key(space, r["params"]) for r in trace if r.get("params") is not None and not r.get("edits")}


def untried_steps(
    space: Any, incumbent: Mapping[str, Any], names: Sequence[str], frozen: Iterable[str], tried: set[str]
) -> dict[str, list[dict[str, Any]]]:
    """Per name, the one-parameter steps (`SearchSpace.steps`) whose configuration was not tried yet."""
    out = {}
    for name in names:
        steps = [s for s in space.steps(incumbent, name, frozen) if config_key(space, {**incumbent, **s}) not in tried]
        if steps:
            out[name] = steps
    return out


def local_step(
    space: Any,
    incumbent: Mapping[str, Any],
    names: Sequence[str],
    frozen: Iterable[str],
    tried: set[str],
    rng: random.Random,
) -> dict[str, Any] | None:
    """A random untried step of one of ``names``: a listed step when one is left, else a wider Gaussian one; None
    when nothing untried was found."""
    frozen = tuple(frozen)
    options = untried_steps(space, incumbent, names, frozen, tried)
    if options:
        name = rng.choice(sorted(options))
        return dict(rng.choice(options[name]))
    for attempt in range(WIDE_TRIES):
        if not names:
            break
        name = rng.choice(list(names))
        changes = space.neighbour(incumbent, rng, [name], min(1.0, 0.25 * (1 + attempt / 20)))
        if (
            changes
            and not space.check_changes(changes, incumbent, frozen)
            and config_key(space, {**incumbent, **changes}) not in tried
        ):
            return dict(changes)
    return None


def propose(view: Any) -> dict[str, Any]:
    tried = tried_configs(view.space, view.trace) | {config_key(view.space, view.incumbent)}
    changes = local_step(view.space, view.incumbent, view.free_names, view.frozen, tried, view.rng)
    if changes is None:
        raise RuntimeError("local search: every step around the incumbent was tried already")
    return {
        "changes": changes,
        "hypothesis": "local search: a random one-parameter step from the best configuration",
        "expected_direction": "unknown: a step drawn at random",
    }
