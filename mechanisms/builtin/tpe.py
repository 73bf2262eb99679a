"""Optuna's TPE sampler over the search space (the classical model-based baseline), refitted from the trace.

No memory outside the trace: every call rebuilds an in-memory study from the recorded experiments
(``optuna.trial.create_trial``) and asks a ``TPESampler`` seeded from the view's seed, so the proposal is a function
of the trace and the seed alone, and a resumed run proposes what it would have.

Started at the default configuration: the run's baseline experiment (the default) is the first trial of the study;
a trace without it gets the default enqueued (``Study.enqueue_trial``) as Optuna users start a study from a known
configuration. The first ``n_startup_trials`` (Optuna's default, 10) are then drawn at random, as in Optuna.

A crashed experiment is infeasible: a completed trial with Optuna 5's constraint ``crashed = 1`` (``create_trial(...,
constraints=...)``, what ``Trial.set_constraint`` records; the ``constraints_func`` argument is deprecated in 5.0).
TPE ranks infeasible trials after every feasible one, so they fall in the "bad" density and the search moves away from
them; a failed trial would be ignored instead, and TPE would keep sampling near it.
"""

from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, create_trial

NAME = "tpe"
TARGET = "propose"
MAX_CHANGES = None  # a whole configuration per proposal, not 1-3 changes
ASKS = 20  # a proposal equal to the incumbent is re-asked with the next seed
CRASHED = "crashed"  # the constraint a crashed experiment violates


def distributions(view: Any) -> dict[str, BaseDistribution]:
    """One optuna distribution per free parameter (frozen ones keep the incumbent's value)."""
    frozen = set(view.frozen)
    out: dict[str, BaseDistribution] = {}
    for p in view.space:
        if p.name in frozen:
            continue
        if p.kind == "int":
            out[p.name] = IntDistribution(int(p.low), int(p.high), log=p.log)
        elif p.kind == "float":
            out[p.name] = FloatDistribution(float(p.low), float(p.high), log=p.log)
        else:
            out[p.name] = CategoricalDistribution([False, True] if p.kind == "bool" else list(p.choices))
    return out


def history(view: Any, dists: dict[str, BaseDistribution]) -> list[FrozenTrial]:
    """The trace as completed optuna trials; a crash is infeasible (constraint ``crashed`` = 1, the worst value
    seen as its value, which TPE does not read for an infeasible trial)."""
    values = [r["val_bpb"] for r in view.trace if r.get("status") != "crash" and r.get("val_bpb") is not None]
    worst = max(values) if values else 0.0
    trials = []
    for record in view.trace:
        crashed = record.get("status") == "crash"
        value = worst if crashed else record.get("val_bpb")
        params = {k: _internal(dists[k], v) for k, v in (record.get("params") or {}).items() if k in dists}
        if value is None or set(params) != set(dists) or view.space.check_values(params):
            continue
        trials.append(
            create_trial(
                params=params,
                distributions=dists,
                value=float(value),
                constraints={CRASHED: 1.0 if crashed else 0.0},
            )
        )
    return trials


def starts_at_default(view: Any, dists: dict[str, BaseDistribution], trials: list[FrozenTrial]) -> dict[str, Any]:
    """The default configuration's values to enqueue as the next trial; empty when the study has it already or it
    is the incumbent (a proposal must change something)."""
    default = {k: _internal(d, view.space.defaults()[k]) for k, d in dists.items()}
    if any(t.params == default for t in trials) or all(_same(v, view.incumbent.get(k)) for k, v in default.items()):
        return {}
    return default


def _internal(dist: BaseDistribution, value: Any) -> Any:
    if isinstance(dist, FloatDistribution):
        return float(value)
    if isinstance(dist, IntDistribution):
        return int(value)
    return value


def propose(view: Any) -> dict[str, Any]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = distributions(view)
    trials = history(view, dists)
    default = starts_at_default(view, dists, trials)
    for attempt in range(ASKS):
        sampler = optuna.samplers.TPESampler(seed=(view.seed + attempt) % 2**32)
        study = optuna.create_study(direction="minimize", sampler=sampler)
        study.add_trials(trials)
        if default and attempt == 0:
            study.enqueue_trial(default)
        params = view.space.repair({**view.incumbent, **study.ask(dists).params})  # the batch rule, as declared
        changes = {k: v for k, v in params.items() if not _same(v, view.incumbent.get(k))}
        if changes and not view.check_changes(changes, max_changes=None):
            return {
                "changes": changes,
                "hypothesis": f"TPE (optuna) on {len(trials)} recorded experiments",
                "expected_direction": "lower: the sampler's expected-improvement pick",
            }
    raise RuntimeError("tpe: every proposal equalled the incumbent")


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b
