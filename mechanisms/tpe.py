"""Optuna's TPE sampler over the search space (the classical model-based baseline), refitted from the trace.

No memory outside the trace: every call rebuilds an in-memory study from the recorded experiments
(``optuna.trial.create_trial``) and asks a ``TPESampler`` seeded from the view's seed, so the proposal is a function
of the trace and the seed alone, and a resumed run proposes what it would have. A crashed experiment enters the study
with the worst val_bpb seen (TPE would otherwise ignore failed trials and keep sampling near them).
"""

from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, create_trial

NAME = "tpe"
TARGET = "propose"
MAX_CHANGES = None  # a whole configuration per proposal, not 1-3 changes
ASKS = 20  # a proposal equal to the incumbent is re-asked with the next seed


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
    """The trace as completed optuna trials; crashes carry the worst val_bpb seen."""
    values = [r["val_bpb"] for r in view.trace if r.get("status") != "crash" and r.get("val_bpb") is not None]
    worst = max(values) if values else None
    trials = []
    for record in view.trace:
        value = record.get("val_bpb") if record.get("status") != "crash" else worst
        params = {k: _internal(dists[k], v) for k, v in record.get("params", {}).items() if k in dists}
        if value is None or set(params) != set(dists) or view.space.check_values(params):
            continue
        trials.append(create_trial(params=params, distributions=dists, value=float(value)))
    return trials


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
    for attempt in range(ASKS):
        sampler = optuna.samplers.TPESampler(seed=(view.seed + attempt) % 2**32)
        study = optuna.create_study(direction="minimize", sampler=sampler)
        study.add_trials(trials)
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
