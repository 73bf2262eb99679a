"""`ablation bbob`: the project's mechanisms on a standard benchmark beyond our task, the BBOB functions.

A BBOB function (COCO's noiseless suite, served by IOHprofiler's ``ioh`` package offline) becomes a task with a
continuous search space: ``SearchSpace`` of ``d`` float parameters x0 ... x{d-1} in [-5, 5], the default at the
centre. A mechanism runs through the mechanism runtime the inner loop uses (``view_payload`` → the mechanism's
callable: a built-in in process, a module from a file in the OS sandbox; its output checked with its declared cap),
in the inner loop's order: the default first (the baseline), then one proposal per evaluation, the greedy keep rule,
and the inner loop's recorded fallback (the seeded one-parameter step) where a proposal is refused, fails or repeats a
configuration. Optuna's CMA-ES (x0 the centre, the same initial step as `cma_es`), TPE and random search run directly
as well, the centre enqueued as their first trial. Every method gets the same number of evaluations.

Reported as LLM-designed optimisers are (LLaMEA on BBOB): per run the best-so-far precision f_best − f_opt, mapped to
a normalised regret r = (log10(clip(precision, 1e-8, 1e2)) + 8) / 10 in [0, 1] (0: the 1e-8 target hit), and the
AOCC, the mean over the evaluations of 1 − r of the best so far (the area over the convergence curve; 1 is best).
Mechanisms that ask an LLM (llm_greedy, tabu, bandit, doe, stagnation, centaur) need a model per proposal and are
listed as not run; a decide mechanism (annealing) runs beside a proposer, named ``PROPOSER+DECIDER``.
"""

from __future__ import annotations

import json
import math
import random
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ioh
import optuna

from ablation.stats import bootstrap_ci, holm, mean_sd, paired_comparison
from checkpoints.run_folder import write_atomic, write_json_atomic
from mechanisms.base import (
    MechanismSpec,
    MechanismView,
    check_decision,
    check_proposal,
    proposal_cap,
    view_payload,
    view_seed,
)
from mechanisms.builtin.cma_es import SIGMA0
from mechanisms.builtin.local_search import config_key, local_step, tried_configs
from mechanisms.space import Param, SearchSpace

LOW, HIGH = -5.0, 5.0
PRECISION_RANGE = (1e-8, 1e2)
NO_LLM_MECHANISMS = ("random_search", "tpe", "cma_es", "local_search")
REFERENCE = "cma_es"  # the paired comparisons are against CMA-ES, the strongest classical baseline here
NOT_RUN = {
    "llm_greedy": "asks the LLM for every proposal",
    "tabu": "asks the LLM first (its own perturbation only after refusals)",
    "bandit": "asks the LLM within the chosen group",
    "doe": "asks the LLM once its design is exhausted",
    "stagnation": "asks the LLM",
    "centaur": "asks the LLM every third proposal",
    "annealing": "a decide mechanism: run it beside a proposer, e.g. local_search+annealing",
}
OPTUNA_METHODS = ("optuna_cmaes", "optuna_tpe", "optuna_random")
DEFAULT_FUNCTIONS = (1, 8, 15, 21)  # sphere, Rosenbrock, Rastrigin (rotated), Gallagher's 101 peaks
NO_MODEL_ANSWER = "no model on this benchmark: the mechanism asked the LLM"


def bbob_space(dimension: int = 5) -> SearchSpace:
    return SearchSpace(
        tuple(
            Param(name=f"x{i}", kind="float", low=LOW, high=HIGH, default=0.0, doc=f"coordinate {i}")
            for i in range(dimension)
        )
    )


def problem(function: int, instance: int, dimension: int) -> Any:
    return ioh.get_problem(function, instance=instance, dimension=dimension, problem_class=ioh.ProblemClass.BBOB)


def regret(precision: float) -> float:
    """Normalised regret in [0, 1]: log10 of the precision clipped to [1e-8, 1e2], scaled."""
    low, high = PRECISION_RANGE
    clipped = min(high, max(low, precision))
    return (math.log10(clipped) - math.log10(low)) / (math.log10(high) - math.log10(low))


@dataclass
class Objective:
    """One BBOB problem as a black box over a configuration; records every evaluation's value."""

    function: int
    instance: int
    dimension: int
    values: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._problem = problem(self.function, self.instance, self.dimension)
        self.optimum = float(self._problem.optimum.y)
        self.name = str(self._problem.meta_data.name)

    def __call__(self, params: Mapping[str, Any]) -> float:
        value = float(self._problem([float(params[f"x{i}"]) for i in range(self.dimension)]))
        self.values.append(value)
        return value

    def curve(self) -> list[float]:
        """Normalised regret of the best so far after each evaluation."""
        best, out = math.inf, []
        for value in self.values:
            best = min(best, value)
            out.append(regret(best - self.optimum))
        return out


def mechanism_fn(name: str) -> tuple[Callable[[dict[str, Any], Any], dict[str, Any]], str, str]:
    """A mechanism's callable, as the inner loop loads it: a built-in name in process; a .py module (generated) in
    the OS sandbox. Returns (fn, name, origin)."""
    path = Path(name)
    if path.suffix == ".py":
        from mechanisms.sandbox import SandboxedMechanism

        spec = MechanismSpec.from_source(path.read_text(), origin="generated")
        return SandboxedMechanism(spec), spec.name, "generated"
    from nodes.mechanism_loader import builtin_mechanism

    mechanism = builtin_mechanism(name)
    return mechanism.fn, name, "builtin"


def run_mechanism(name: str, objective: Objective, budget: int, seed: int) -> dict[str, Any]:
    """``budget`` evaluations of the mechanism ``name``: the default first, then its proposals; the inner loop's
    greedy rule (or, for ``PROPOSER+DECIDER``, the decide mechanism's verdict) and its recorded fallback step."""
    proposer, _, decider = name.partition("+")
    fn, mech_name, origin = mechanism_fn(proposer)
    decide = mechanism_fn(decider)[0] if decider else None
    space = bbob_space(objective.dimension)
    incumbent = space.defaults()
    best = objective(incumbent)
    trace: list[Mapping[str, Any]] = [
        {"id": "e0000", "iteration": 0, "params": incumbent, "changes": {}, "status": "keep", "val_bpb": best}
    ]
    fallbacks, asked, decisions = 0, 0, 0

    def no_model(guidance: str, constraints: Mapping[str, Any] | None) -> dict[str, Any]:
        nonlocal asked
        asked += 1
        raise RuntimeError(NO_MODEL_ANSWER)

    settings = {"strategy": "explore", "frozen": [], "guidance": "", "noise_margin": 0.0}
    for iteration in range(1, budget):
        payload = view_payload(
            trace=trace,
            space=space,
            incumbent=incumbent,
            best_bpb=best,
            iteration=iteration,
            seed=view_seed(seed, iteration, "propose"),
            settings=settings,
        )
        changes: dict[str, Any] | None = None
        try:
            output = fn(payload, no_model)
            view = MechanismView.from_payload(payload, lambda g, c: {})
            if not check_proposal(output, view, proposal_cap(mech_name, origin)):
                changes = dict(output["changes"])
        except Exception:  # noqa: BLE001 - a failed call is answered by the fallback step, as in the inner loop
            changes = None
        tried = tried_configs(space, trace)
        if changes is None or config_key(space, {**incumbent, **changes}) in tried:
            fallbacks += 1
            rng = random.Random(f"{seed}:{iteration}:fallback")
            step = local_step(space, incumbent, space.free_names(), (), tried | {config_key(space, incumbent)}, rng)
            changes = step or space.neighbour(incumbent, rng, [rng.choice(space.free_names())], 0.25)
        params = {**incumbent, **changes}
        value = objective(params)
        record = {
            "id": f"e{iteration:04d}",
            "iteration": iteration,
            "params": params,
            "changes": changes,
            "status": "pending",
            "val_bpb": value,
        }
        keep = value < best
        if decide is not None:  # as the decide node: its verdict where valid, else the greedy rule
            judged = view_payload(
                trace=trace,
                space=space,
                incumbent=incumbent,
                best_bpb=best,
                iteration=iteration,
                seed=view_seed(seed, iteration, "decide"),
                settings=settings,
                result=record,
            )
            try:
                verdict = decide(judged, no_model)
                if not check_decision(verdict):
                    keep, decisions = bool(verdict["keep"]), decisions + 1
            except Exception:  # noqa: BLE001 - a failed decide call leaves the greedy rule's verdict
                pass
        trace.append({**record, "status": "keep" if keep else "discard"})
        if keep:
            incumbent = params
            best = min(best, value)
    return {"fallbacks": fallbacks, "llm_asks": asked, "decisions": decisions}


def run_optuna(method: str, objective: Objective, budget: int, seed: int) -> dict[str, Any]:
    """Optuna's own loop, the centre enqueued as the first trial."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    names = [f"x{i}" for i in range(objective.dimension)]
    centre = dict.fromkeys(names, 0.0)
    sampler: optuna.samplers.BaseSampler
    if method == "optuna_cmaes":
        with warnings.catch_warnings():  # x0 and sigma0 are deprecated since Optuna 4.9, still how 5.0 sets them
            warnings.simplefilter("ignore", FutureWarning)
            sampler = optuna.samplers.CmaEsSampler(x0=centre, sigma0=SIGMA0, seed=seed)
    elif method == "optuna_tpe":
        sampler = optuna.samplers.TPESampler(seed=seed)
    else:
        sampler = optuna.samplers.RandomSampler(seed=seed)
    study = optuna.create_study(direction="minimize", sampler=sampler)
    study.enqueue_trial(centre)
    study.optimize(lambda t: objective({n: t.suggest_float(n, LOW, HIGH) for n in names}), n_trials=budget)
    return {}


@dataclass
class BbobSettings:
    functions: list[int] = field(default_factory=lambda: list(DEFAULT_FUNCTIONS))
    instances: list[int] = field(default_factory=lambda: [1, 2])
    seeds: int = 3
    budget: int = 100  # evaluations per run, the default included (20 d at d = 5)
    dimension: int = 5
    methods: list[str] = field(default_factory=lambda: [*NO_LLM_MECHANISMS, *OPTUNA_METHODS])


def run_one(method: str, function: int, instance: int, seed: int, settings: BbobSettings) -> dict[str, Any]:
    objective = Objective(function, instance, settings.dimension)
    start = time.monotonic()
    if method in OPTUNA_METHODS:
        extra = run_optuna(method, objective, settings.budget, seed)
    else:
        extra = run_mechanism(method, objective, settings.budget, seed)
    curve = objective.curve()
    assert len(curve) == settings.budget, (method, len(curve))
    return {
        "method": method,
        "function": function,
        "name": objective.name,
        "instance": instance,
        "seed": seed,
        "evaluations": len(curve),
        "precision": min(objective.values) - objective.optimum,
        "regret": curve[-1],
        "aocc": 1.0 - sum(curve) / len(curve),
        "seconds": round(time.monotonic() - start, 3),
        **extra,
    }


def run_benchmark(out: Path, settings: BbobSettings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every method x function x instance x seed (each run cached in out/runs/, never run twice); the figures."""
    results = []
    for method in settings.methods:
        label = Path(method).stem if method.endswith(".py") else method
        for function in settings.functions:
            for instance in settings.instances:
                for seed in range(settings.seeds):
                    path = out / "runs" / f"{label}-f{function:02d}-i{instance:02d}-s{seed}-b{settings.budget}.json"
                    if path.exists():
                        results.append(json.loads(path.read_text()))
                        continue
                    log(f"bbob: {label} f{function} i{instance} seed {seed}")
                    result = {**run_one(method, function, instance, seed, settings), "method": label}
                    write_json_atomic(path, result)
                    results.append(result)
    figures = analyse(results, settings)
    write_json_atomic(out / "bbob.json", figures)
    write_atomic(out / "bbob.md", table(figures))
    return figures


def _summary(xs: list[float]) -> dict[str, float]:
    mean, sd = mean_sd(xs)
    low, high = bootstrap_ci(xs, n_boot=2000)
    return {"n": len(xs), "mean": mean, "sd": sd, "ci_low": low, "ci_high": high}


def analyse(results: list[dict[str, Any]], settings: BbobSettings) -> dict[str, Any]:
    methods = list(dict.fromkeys(r["method"] for r in results))
    functions = {r["function"]: r["name"] for r in results}
    cells: dict[str, dict[str, Any]] = {}
    for method in methods:
        mine = [r for r in results if r["method"] == method]
        cells[method] = {
            "overall": {"regret": _summary([r["regret"] for r in mine]), "aocc": _summary([r["aocc"] for r in mine])},
            "functions": {
                str(f): {
                    "regret": _summary([r["regret"] for r in mine if r["function"] == f]),
                    "aocc": _summary([r["aocc"] for r in mine if r["function"] == f]),
                }
                for f in functions
            },
            "fallbacks": sum(r.get("fallbacks", 0) for r in mine),
            "seconds": sum(r["seconds"] for r in results if r["method"] == method),
        }
    paired_against_reference(results, cells)
    return {
        "settings": {k: getattr(settings, k) for k in ("functions", "instances", "seeds", "budget", "dimension")},
        "functions": {str(f): n for f, n in functions.items()},
        "methods": cells,
        "reference": REFERENCE,
        "not_run": {k: v for k, v in NOT_RUN.items() if not any(k in m.split("+") for m in settings.methods)},
        "runs": results,
    }


def paired_against_reference(results: list[dict[str, Any]], cells: dict[str, dict[str, Any]]) -> None:
    """Each method's regret against the reference's on the same runs (function, instance, seed): the mean paired
    difference with a bootstrap interval and a permutation p, Holm-adjusted over the methods (`vs_reference`)."""
    by_run = {(r["method"], r["function"], r["instance"], r["seed"]): r["regret"] for r in results}
    keys = sorted({k[1:] for k in by_run if k[0] == REFERENCE})
    if not keys:
        return
    others = [m for m in cells if m != REFERENCE and all((m, *k) in by_run for k in keys)]
    comparisons = {
        m: paired_comparison([by_run[(m, *k)] for k in keys], [by_run[(REFERENCE, *k)] for k in keys]) for m in others
    }
    adjusted = holm({m: c.permutation_p for m, c in comparisons.items()})
    for method, c in comparisons.items():
        cells[method]["vs_reference"] = {
            "n": c.n, "mean_diff": c.mean_diff, "ci_low": c.ci_low, "ci_high": c.ci_high, "holm_p": adjusted[method]
        }  # fmt: skip


def table(figures: dict[str, Any]) -> str:
    s = figures["settings"]
    fns = dict(sorted(figures["functions"].items(), key=lambda kv: int(kv[0])))  # JSON keeps them as sorted text
    ref = figures.get("reference", REFERENCE)
    head = " | ".join(f"f{f} {name}" for f, name in fns.items())
    lines = [
        f"# BBOB, d = {s['dimension']}: {s['budget']} evaluations per run\n",
        f"- functions {', '.join(fns)}; instances {', '.join(map(str, s['instances']))}; seeds 0..{s['seeds'] - 1} "
        f"({len(s['instances']) * s['seeds']} runs per method and function); every method starts at the centre",
        "- normalised regret r = (log10(clip(f_best − f_opt, 1e-8, 1e2)) + 8) / 10 (0 best); AOCC = mean over the "
        "evaluations of 1 − r of the best so far (1 best); mean [bootstrap 95 % CI] over runs\n",
        f"| method | regret, all | AOCC, all | regret vs {ref} (paired), Holm p | {head} | fallback steps |",
        "|---" * (5 + len(fns)) + "|",
    ]
    for method, cell in sorted(figures["methods"].items(), key=lambda kv: kv[1]["overall"]["regret"]["mean"]):
        o = cell["overall"]
        per_fn = " | ".join(f"{cell['functions'][f]['regret']['mean']:.3f}" for f in fns)
        vs = cell.get("vs_reference")
        paired = (
            f"{vs['mean_diff']:+.3f} [{vs['ci_low']:+.3f}, {vs['ci_high']:+.3f}], p {vs['holm_p']:.3f}"
            if vs
            else ("reference" if method == ref else "—")
        )
        lines.append(
            f"| {method} | {_ci(o['regret'])} | {_ci(o['aocc'])} | {paired} | {per_fn} | {cell['fallbacks']} |"
        )
    lines.append("\nPer-function columns: mean normalised regret.")
    if figures["not_run"]:
        lines.append("\nNot run: " + "; ".join(f"{k} ({v})" for k, v in figures["not_run"].items()) + ".")
    return "\n".join(lines) + "\n"


def _ci(summary: dict[str, float]) -> str:
    low, high = summary["ci_low"], summary["ci_high"]
    band = "" if math.isnan(low) else f" [{low:.3f}, {high:.3f}]"
    return f"{summary['mean']:.3f}{band}"
