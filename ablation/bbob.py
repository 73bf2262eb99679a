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
Mechanisms that ask an LLM (llm_greedy, tabu, bandit, doe, stagnation, centaur, and a kept mechanism named by its
``record.json``) ask the run's chat model (``--llm``: the embedded model unless an endpoint is configured) through
the inner loop's own proposer (``ask_llm``: the enumerated one-parameter steps, every answer valid), its prompt
naming this task instead of the GPT's; every call is a traced ``llm_call`` event in ``traces/<run>/trace.jsonl``,
so the count of model answers each run used is read from the trace, not assumed. Without a model they are listed as
not run. A decide mechanism (annealing) runs beside a proposer, named ``PROPOSER+DECIDER``.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ioh
import optuna

from ablation.stats import bootstrap_ci, holm, mean_sd, paired_comparison
from checkpoints.run_folder import Ledger, write_atomic, write_json_atomic
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
LLM_MECHANISMS = ("llm_greedy", "tabu", "bandit", "doe", "stagnation", "centaur")
OPTUNA_METHODS = ("optuna_cmaes", "optuna_tpe", "optuna_random")
TASK = (
    "You minimise an unknown function f of the coordinates {names}, each in [-5, 5]. Each experiment evaluates f "
    "at one point and reports f as val_bpb: lower is better."
)
DEFAULT_FUNCTIONS = (1, 8, 15, 21)  # sphere, Rosenbrock, Rastrigin (rotated), Gallagher's 101 peaks
NO_MODEL_ANSWER = "no model on this benchmark: the mechanism asked the LLM"


def bbob_space(dimension: int = 5) -> SearchSpace:
    return SearchSpace(
        tuple(
            Param(
                name=f"x{i}",
                kind="float",
                low=LOW,
                high=HIGH,
                default=0.0,
                doc=f"coordinate {i}",
                declared_group=f"x{i}",
            )
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
    the OS sandbox; a kept mechanism by its record (a run's ``mechanisms/<id>/record.json``: composed with its
    parameters, or generated with its recorded source, checked against its sha256). Returns (fn, name, origin)."""
    path = Path(name)
    if path.suffix == ".py":
        from mechanisms.sandbox import SandboxedMechanism

        spec = MechanismSpec.from_source(path.read_text(), origin="generated")
        return SandboxedMechanism(spec), spec.name, "generated"
    from nodes.mechanism_loader import builtin_mechanism, load_mechanism

    if path.name == "record.json":
        record = json.loads(path.read_text())
        loaded = load_mechanism(record, path.parents[2])  # run/mechanisms/<id>/record.json: paths are the run's
        return loaded.fn, str(record["name"]), str(record["origin"])
    mechanism = builtin_mechanism(name)
    return mechanism.fn, name, "builtin"


def method_label(method: str) -> str:
    """How a method is named in the results: a module by its stem, a record by its mechanism's id (name-sha8)."""
    path = Path(method)
    if path.suffix == ".py":
        return path.stem
    if path.name == "record.json":
        return str(json.loads(path.read_text())["id"]).replace("@", "-")
    return method


def asks_llm(method: str) -> bool:
    """Whether a method needs a chat model: a built-in that asks the LLM, or any kept or generated mechanism."""
    proposer = method.partition("+")[0]
    return proposer in LLM_MECHANISMS or Path(proposer).name == "record.json" or proposer.endswith(".py")


def llm_asker(
    space: SearchSpace, llm: Any, seed: int, trace_dir: Path, caller: str
) -> tuple[Callable[[dict[str, Any], str, Mapping[str, Any] | None], dict[str, Any]], Ledger]:
    """``ask(state, guidance, constraints)``: the inner loop's proposer on this task's space, every model call
    recorded in ``trace_dir``'s trace (a fresh one per run)."""
    from nodes.context import InnerContext
    from nodes.llm_proposer import ask_llm
    from trials.launcher import TrainerSettings

    if trace_dir.exists():  # an interrupted run starts over: its trace must hold this run's calls only
        shutil.rmtree(trace_dir)
    ledger = Ledger(trace_dir)
    ctx = InnerContext(
        ledger=ledger,
        space=space,
        base_source="",
        trainer=TrainerSettings(),
        llm=llm,
        mode="params",
        batch=1,
        noise_margin=0.0,
        seed=seed,
        llm_attempts=1,
        proposal_style="values",
        task=TASK.format(names=", ".join(space.names)),
    )

    def ask(state: dict[str, Any], guidance: str, constraints: Mapping[str, Any] | None) -> dict[str, Any]:
        proposal = ask_llm(state, ctx, guidance, dict(constraints) if constraints else None, caller=caller)  # type: ignore[arg-type]
        return {k: proposal[k] for k in ("changes", "hypothesis", "expected_direction") if k in proposal}

    return ask, ledger


def run_mechanism(
    name: str,
    objective: Objective,
    budget: int,
    seed: int,
    llm: Any = None,
    trace_dir: Path | None = None,
) -> dict[str, Any]:
    """``budget`` evaluations of the mechanism ``name``: the default first, then its proposals; the inner loop's
    greedy rule (or, for ``PROPOSER+DECIDER``, the decide mechanism's verdict) and its recorded fallback step.
    With ``llm`` (and ``trace_dir`` for its calls' trace) the mechanism's asks are answered by that chat model;
    without, an ask fails and the fallback step answers."""
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
    settings = {"strategy": "explore", "frozen": [], "guidance": "", "noise_margin": 0.0}
    ledger: Ledger | None = None
    if llm is not None:
        ask_model, ledger = llm_asker(space, llm, seed, trace_dir or Path(".bbob-trace"), f"mechanism:{mech_name}")
    state: dict[str, Any] = {}

    def model(guidance: str, constraints: Mapping[str, Any] | None) -> dict[str, Any]:
        nonlocal asked
        asked += 1
        if llm is None:
            raise RuntimeError(NO_MODEL_ANSWER)
        return ask_model(state, guidance, constraints)

    for iteration in range(1, budget):
        state.clear()
        state.update(
            {"iteration": iteration, "experiments": list(trace), "incumbent": incumbent, "best_bpb": best,
             "settings": settings}
        )  # fmt: skip
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
            output = fn(payload, model)
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
                verdict = decide(judged, model)
                if not check_decision(verdict):
                    keep, decisions = bool(verdict["keep"]), decisions + 1
            except Exception:  # noqa: BLE001 - a failed decide call leaves the greedy rule's verdict
                pass
        trace.append({**record, "status": "keep" if keep else "discard"})
        if keep:
            incumbent = params
            best = min(best, value)
    out: dict[str, Any] = {"fallbacks": fallbacks, "llm_asks": asked, "decisions": decisions}
    if ledger is not None:  # what the trace proves: the model's answers this run used, and the ones that failed
        calls = list(ledger.events("llm_call"))
        out["llm_calls"] = len(calls)
        out["llm_failed"] = sum(1 for c in calls if not c.get("ok"))
        out["llm_fallbacks"] = sum(1 for _ in ledger.events("proposal_fallback"))
    return out


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


def run_one(
    method: str,
    function: int,
    instance: int,
    seed: int,
    settings: BbobSettings,
    llm: Any = None,
    trace_dir: Path | None = None,
) -> dict[str, Any]:
    objective = Objective(function, instance, settings.dimension)
    start = time.monotonic()
    if method in OPTUNA_METHODS:
        extra = run_optuna(method, objective, settings.budget, seed)
    else:
        extra = run_mechanism(method, objective, settings.budget, seed, llm if asks_llm(method) else None, trace_dir)
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


LLMForSeed = Callable[[int], Any]  # a run's seed -> the chat model that answers its mechanism's asks


def run_benchmark(
    out: Path,
    settings: BbobSettings,
    log: Callable[[str], None] = print,
    llm_for: LLMForSeed | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    """Every method x function x instance x seed (each run cached in out/runs/, never run twice); the figures.
    A method that asks the LLM needs ``llm_for`` (``model`` describes it in the figures); its calls' traces are
    kept in out/traces/."""
    needs_model = [m for m in settings.methods if asks_llm(m)]
    if needs_model and llm_for is None:
        raise ValueError(f"{', '.join(needs_model)} ask the LLM: run with a model (--llm)")
    results = []
    for method in settings.methods:
        label = method_label(method)
        for function in settings.functions:
            for instance in settings.instances:
                for seed in range(settings.seeds):
                    stem = f"{label}-f{function:02d}-i{instance:02d}-s{seed}-b{settings.budget}"
                    path = out / "runs" / f"{stem}.json"
                    if path.exists():
                        results.append(json.loads(path.read_text()))
                        continue
                    log(f"bbob: {label} f{function} i{instance} seed {seed}")
                    llm = llm_for(seed) if llm_for is not None and asks_llm(method) else None
                    result = run_one(method, function, instance, seed, settings, llm, out / "traces" / stem)
                    write_json_atomic(path, {**result, "method": label})
                    results.append({**result, "method": label})
    figures = analyse(results, settings)
    if model and needs_model:
        figures["llm"] = model
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
            "llm_calls": sum(r.get("llm_calls", 0) for r in mine),
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
        f"| method | regret, all | AOCC, all | regret vs {ref} (paired), Holm p | {head} "
        "| fallback steps | LLM calls |",
        "|---" * (6 + len(fns)) + "|",
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
            f"| {method} | {_ci(o['regret'])} | {_ci(o['aocc'])} | {paired} | {per_fn} | {cell['fallbacks']} "
            f"| {cell.get('llm_calls', 0)} |"
        )
    lines.append(
        "\nPer-function columns: mean normalised regret. LLM calls: the model's answers the runs' traces record"
        + (f" ({figures['llm']})." if figures.get("llm") else ".")
    )
    if figures["not_run"]:
        lines.append("\nNot run: " + "; ".join(f"{k} ({v})" for k, v in figures["not_run"].items()) + ".")
    return "\n".join(lines) + "\n"


def _ci(summary: dict[str, float]) -> str:
    low, high = summary["ci_low"], summary["ci_high"]
    band = "" if math.isnan(low) else f" [{low:.3f}, {high:.3f}]"
    return f"{summary['mean']:.3f}{band}"
