"""CMA-ES over the search space (the classical evolution strategy), started at the default, rebuilt from the trace.

Set up as Optuna's ``CmaEsSampler(x0=default, sigma0=SIGMA0)`` sets up the ``cmaes`` library's ``CMA``: the mean at
the default configuration, a small initial step, the library's population size (4 + 3 ln d), bounds, 10 d
resamplings. Every free parameter is one coordinate of the unit cube (``Param.to_unit``: log-aware numerics, the
index of a choice, 0/1 for a bool), so the categoricals are searched too (Optuna's sampler would draw them at random).

No memory outside the trace: the recorded experiments, in order (the baseline, i.e. the default configuration, is
the first member of generation 0, as an enqueued first trial is in Optuna), fill the generations; each complete
generation is told at the points actually trained (``CMA.tell`` draws nothing, so the state is a function of the
trace alone) and the proposal is a draw from the current distribution with the view's seed. Optuna's sampler cannot
be replayed that way (its state lives in pickled study attributes, written at the points it asked), hence the library.

A crashed experiment is infeasible: it is told as a large finite value, worse than every val_bpb of the trace (CMA-ES
ranks its samples, so it ranks last in its generation); Optuna's CmaEsSampler ignores constraints and failed trials.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from cmaes import CMA

NAME = "cma_es"
TARGET = "propose"
MAX_CHANGES = None  # a whole configuration per proposal, not 1-3 changes
SIGMA0 = 0.1  # initial step in unit coordinates (Optuna's default is 1/6 of the range)
ASKS = 50  # a draw equal to the incumbent or to a trained configuration is drawn again


def encode(space: Any, names: Sequence[str], params: Mapping[str, Any]) -> np.ndarray:
    return np.array([space[n].to_unit(params.get(n, space[n].default)) for n in names], dtype=float)


def decode(space: Any, names: Sequence[str], x: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, u in zip(names, x, strict=True):
        p = space[name]
        u = float(min(1.0, max(0.0, u)))
        if p.kind == "bool":
            out[name] = u >= 0.5
        elif p.kind == "choice":
            out[name] = p.choices[int(round(u * (len(p.choices) - 1)))]
        else:
            out[name] = p.from_unit(u)
    return out


def crash_value(trace: Sequence[Mapping[str, Any]]) -> float:
    """Worse than every finite val_bpb of the trace: a crash ranks last."""
    values = [float(r["val_bpb"]) for r in trace if r.get("status") != "crash" and r.get("val_bpb") is not None]
    worst = max(values) if values else 0.0
    return worst + max(1.0, abs(worst))


def told(trace: Sequence[Mapping[str, Any]]) -> list[tuple[Mapping[str, Any], float | None]]:
    """The trace's trainings in order as (params, value): crashes at ``crash_value``, running ones None."""
    penalty = crash_value(trace)
    out: list[tuple[Mapping[str, Any], float | None]] = []
    for record in trace:
        if record.get("params") is None or record.get("edits"):
            continue
        if record.get("status") == "crash":
            out.append((record["params"], penalty))
        elif record.get("val_bpb") is not None:
            out.append((record["params"], float(record["val_bpb"])))
        else:
            out.append((record["params"], None))  # running: asked, not told
    return out


def optimizer(view: Any, seed: int) -> CMA:
    """The CMA-ES state after every complete generation of the trace (told at the trained points)."""
    names = list(view.free_names)
    x0 = encode(view.space, names, view.space.defaults())
    cma = CMA(
        mean=x0,
        sigma=SIGMA0,
        bounds=np.array([[0.0, 1.0]] * len(names)),
        seed=seed,
        n_max_resampling=10 * len(names),
    )
    members = told(view.trace)
    size = cma.population_size
    for start in range(0, len(members) - size + 1, size):
        generation = members[start : start + size]
        if any(value is None for _, value in generation):
            break
        cma.tell([(encode(view.space, names, params), float(value or 0.0)) for params, value in generation])
    return cma


def cma_proposal(view: Any) -> dict[str, Any]:
    """A draw from the current CMA-ES distribution that differs from the incumbent and from every trained one."""
    from mechanisms.builtin.local_search import config_key, tried_configs

    names = list(view.free_names)
    if not names:
        raise RuntimeError("cma_es: every parameter is frozen")
    cma = optimizer(view, view.seed % (2**31 - 2) + 1)
    tried = tried_configs(view.space, view.trace) | {config_key(view.space, view.incumbent)}
    for _ in range(ASKS):
        draw = view.space.repair({**view.incumbent, **decode(view.space, names, cma.ask())})
        changes = {k: v for k, v in draw.items() if not _same(v, view.incumbent.get(k))}
        if changes and config_key(view.space, draw) not in tried and not view.check_changes(changes, max_changes=None):
            return {
                "changes": changes,
                "hypothesis": f"CMA-ES generation {cma.generation} (population {cma.population_size}, "
                f"step {SIGMA0} from the default)",
                "expected_direction": "lower: a sample of the adapted search distribution",
            }
    raise RuntimeError("cma_es: every draw was the incumbent or a configuration already trained")


def propose(view: Any) -> dict[str, Any]:
    return cma_proposal(view)


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b
