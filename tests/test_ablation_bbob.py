"""BBOB as a task: the space, the regret and AOCC measures, every no-LLM mechanism and Optuna's samplers at equal
evaluations from the centre, a generated module in the sandbox, and the CLI's cached, resumable runs."""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path
from typing import Any

import pytest

from ablation import cli
from ablation.bbob import (
    NO_LLM_MECHANISMS,
    OPTUNA_METHODS,
    BbobSettings,
    Objective,
    bbob_space,
    regret,
    run_benchmark,
    run_mechanism,
    run_one,
    table,
)
from checkpoints.run_folder import Ledger
from llm.scripted import ScriptedChatModel
from nodes.context import InnerContext

GENERATED = '''"""A generated mechanism: a Gaussian step of one coordinate from the incumbent."""

NAME = "one_coordinate"
TARGET = "propose"


def propose(view):
    name = view.rng.choice(list(view.free_names))
    return {
        "changes": view.space.neighbour(view.incumbent, view.rng, [name], 0.1),
        "hypothesis": "one coordinate",
        "expected_direction": "lower",
    }
'''


def test_the_space_and_the_measures() -> None:
    space = bbob_space(5)
    assert space.names == tuple(f"x{i}" for i in range(5))
    assert all(p.kind == "float" and (p.low, p.high, p.default) == (-5.0, 5.0, 0.0) for p in space)
    assert regret(1e-9) == 0.0 and regret(1e-8) == 0.0 and regret(1e3) == 1.0
    assert regret(1.0) == pytest.approx(0.8)
    objective = Objective(1, 1, 5)
    value = objective(space.defaults())
    assert value > objective.optimum and objective.values == [value]
    assert objective.curve() == [regret(value - objective.optimum)]


@pytest.mark.parametrize("method", [*NO_LLM_MECHANISMS, *OPTUNA_METHODS])
def test_every_method_gets_the_same_evaluations_from_the_centre(method: str) -> None:
    settings = BbobSettings(budget=15)
    result = run_one(method, 1, 1, 0, settings)
    assert result["evaluations"] == 15 and 0.0 <= result["regret"] <= 1.0 and 0.0 <= result["aocc"] <= 1.0
    start = Objective(1, 1, 5)
    assert result["precision"] <= start(bbob_space().defaults()) - start.optimum  # never worse than the centre
    assert run_one(method, 1, 1, 0, settings)["precision"] == result["precision"]  # seeded
    if method in NO_LLM_MECHANISMS:
        assert result["llm_asks"] == 0


def test_a_mechanism_improves_on_the_sphere_and_the_best_is_monotone() -> None:
    objective = Objective(1, 1, 5)
    run_mechanism("cma_es", objective, 60, seed=1)
    curve = objective.curve()
    assert all(b <= a for a, b in zip(curve, curve[1:], strict=False)) and curve[-1] < curve[0]


def test_a_generated_module_runs_in_the_sandbox(tmp_path: Path) -> None:
    module = tmp_path / "one_coordinate.py"
    module.write_text(GENERATED)
    result = run_one(str(module), 1, 1, 0, BbobSettings(budget=8))
    assert result["evaluations"] == 8 and result["fallbacks"] < 7  # its own proposals, not the fallback's


def test_an_llm_mechanism_without_a_model_falls_back_every_time() -> None:
    result = run_one("llm_greedy", 1, 1, 0, BbobSettings(budget=6))
    assert result["llm_asks"] == 5 and result["fallbacks"] == 5


def test_the_cli_writes_the_table_and_never_reruns_a_run(tmp_path: Path) -> None:
    args = ["--functions", "1,15", "--instances", "1", "--seeds", "2", "--budget", "12", "--out", str(tmp_path)]
    assert cli.main_bbob([*args, "--methods", "cma_es,local_search,optuna_random"]) == 0
    figures = json.loads((tmp_path / "bbob.json").read_text())
    assert len(figures["runs"]) == 3 * 2 * 2 and set(figures["methods"]) == {"cma_es", "local_search", "optuna_random"}
    cell = figures["methods"]["cma_es"]["functions"]["15"]["regret"]
    assert cell["n"] == 2 and not math.isnan(cell["mean"])
    text = (tmp_path / "bbob.md").read_text()
    assert "| cma_es |" in text and "f15 Rastrigin" in text and "Not run: llm_greedy" in text
    # every other method against CMA-ES on the same runs: the mean of the per-run regret differences
    by_run = {(r["method"], r["function"], r["seed"]): r["regret"] for r in figures["runs"]}
    diffs = [by_run[("local_search", f, s)] - by_run[("cma_es", f, s)] for f in (1, 15) for s in (0, 1)]
    vs = figures["methods"]["local_search"]["vs_reference"]
    assert vs["n"] == 4 and vs["mean_diff"] == pytest.approx(sum(diffs) / 4) and vs["ci_low"] <= vs["ci_high"]
    assert "vs_reference" not in figures["methods"]["cma_es"] and "| cma_es | " in text and "reference |" in text
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").iterdir()}
    assert cli.main_bbob([*args, "--methods", "cma_es,local_search,optuna_random"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").iterdir()} == before


def test_a_decide_mechanism_runs_beside_a_proposer() -> None:
    greedy = Objective(1, 1, 5)
    run_mechanism("local_search", greedy, 30, seed=2)
    annealed = Objective(1, 1, 5)
    result = run_mechanism("local_search+annealing", annealed, 30, seed=2)
    assert len(annealed.values) == 30 and result["llm_asks"] == 0 and result["decisions"] == 29
    # its temperature is in val_bpb units (t0 = 0.01): a sphere's differences of whole units are never accepted, so
    # here its verdicts are the greedy rule's
    assert annealed.values == greedy.values


def first_listed_step(messages: list[Any]) -> dict[str, str]:
    """A scripted model's answer: the first value the prompt lists for a parameter, cycling over the parameters."""
    prompt = str(messages[-1].content)
    options = [line for line in prompt.split("Recent experiments")[0].splitlines() if " = " in line and ": " in line]
    first_listed_step.calls = getattr(first_listed_step, "calls", 0) + 1  # type: ignore[attr-defined]
    line = options[first_listed_step.calls % len(options)]  # type: ignore[attr-defined]
    name, listed = line.split(" = ", 1)[0], line.split(": ", 1)[1]
    return {"step": f"{name}={listed.split(', ')[0].split(' ')[0]}"}


def test_an_llm_mechanism_asks_the_model_and_the_trace_proves_it(tmp_path: Path) -> None:
    llm = ScriptedChatModel(script=[first_listed_step], cycle=True)
    objective = Objective(1, 1, 5)
    result = run_mechanism("llm_greedy", objective, 12, seed=0, llm=llm, trace_dir=tmp_path / "trace")
    calls = list(Ledger(tmp_path / "trace").events("llm_call"))
    assert result["llm_asks"] == 11 and result["llm_calls"] == len(calls) == len(llm.calls) == 11
    # an answer naming a step already tried is off the schema's enum (a grammar-bound server never sends one): refused
    # and answered by the proposer's recorded fallback step, as in the inner loop; the rest are the model's steps
    assert result["llm_failed"] == result["llm_fallbacks"] and result["llm_failed"] <= 3
    assert result["fallbacks"] == 0 and len(objective.values) == 12
    system = str(llm.calls[0][0].content)
    assert system.startswith("You minimise an unknown function f of the coordinates x0, x1, x2, x3, x4")
    assert "GPT" not in system and all(c["node"] == "mechanism:llm_greedy" for c in calls)


def test_the_real_task_keeps_its_own_prompt() -> None:
    from nodes.prompts import COMPACT_PROPOSE_SYSTEM, GPT_TASK

    assert COMPACT_PROPOSE_SYSTEM.format(task=GPT_TASK, meanings="M").startswith(
        "You tune a small GPT language model. Each experiment trains it for a fixed time and\n"
        "measures val_bpb: lower is better. The parameters:\nM\n"
    )
    assert inspect.signature(InnerContext).parameters["task"].default == GPT_TASK


def test_a_kept_mechanism_runs_by_its_record_and_a_model_is_required(tmp_path: Path) -> None:
    from nodes.mechanism_loader import builtin_record

    folder = tmp_path / "run" / "mechanisms" / "doe"
    folder.mkdir(parents=True)
    record = dict(builtin_record("doe", {"design": "L4", "factors": 3, "step": 0.2}))
    (folder / "record.json").write_text(json.dumps(record))
    method = str(folder / "record.json")
    args = ["--functions", "1", "--instances", "1", "--seeds", "1", "--budget", "10", "--out", str(tmp_path / "b")]
    assert cli.main_bbob([*args, "--methods", f"cma_es,{method}"]) == 2  # asks the LLM: refused without --llm
    with pytest.raises(ValueError, match="ask the LLM"):
        run_benchmark(tmp_path / "b", BbobSettings([1], [1], 1, 10, methods=[method]))
    llm = ScriptedChatModel(script=[first_listed_step], cycle=True)
    figures = run_benchmark(
        tmp_path / "b", BbobSettings([1], [1], 1, 10, methods=["cma_es", method]), lambda _: None,
        llm_for=lambda seed: llm, model="scripted",
    )  # fmt: skip
    label = record["id"].replace("@", "-")
    assert set(figures["methods"]) == {"cma_es", label} and figures["llm"] == "scripted"
    run = figures["runs"][-1]
    assert run["method"] == label and run["evaluations"] == 10
    # the design of experiments runs its own L4 design first (no asks), then asks the model
    assert run["llm_calls"] == run["llm_asks"] == len(llm.calls) and run["llm_asks"] < 9
    assert figures["methods"][label]["llm_calls"] == run["llm_calls"]
    trace = tmp_path / "b" / "traces" / f"{label}-f01-i01-s0-b10" / "trace.jsonl"
    assert trace.exists() and f"| {label} |" in table(figures) and "LLM calls" in table(figures)


def test_each_bbob_coordinate_is_its_own_group_and_the_bandit_plays_them_as_arms() -> None:
    """BBOB's coordinates would all fall in the name-derived group "other", leaving the bandit one arm; the space
    declares a group per coordinate (kept through the dict the sandbox receives), so the bandit tries each coordinate
    once, asks the model within it, and then returns to the coordinate whose steps improved."""
    from mechanisms.base import MechanismView, load_builtin, view_payload
    from mechanisms.space import SearchSpace

    space = bbob_space(3)
    assert space.groups() == {"x0": ("x0",), "x1": ("x1",), "x2": ("x2",)}
    assert SearchSpace.from_dict(space.to_dict()).groups() == space.groups()
    base = space.defaults()

    def record(i: int, changes: dict[str, float], value: float) -> dict[str, Any]:
        return {"id": f"e{i:04d}", "iteration": i, "params": {**base, **changes}, "changes": changes,
                "hypothesis": "h", "val_bpb": value, "status": "keep", "mechanism": "bandit", "seconds": 0.0,
                "description": ""}  # fmt: skip

    asked: list[dict[str, Any] | None] = []

    def ask(guidance: str, constraints: dict[str, Any] | None) -> dict[str, Any]:
        asked.append(constraints)
        name = constraints["only"][0] if constraints else "x0"
        return {"changes": {name: 1.0}, "hypothesis": "llm", "expected_direction": "down"}

    bandit = load_builtin("bandit", c=0.1)
    trace = [record(0, {}, 10.0)]
    for i, expected in enumerate(["x0", "x1", "x2"], start=1):
        out = bandit(MechanismView.from_payload(view_payload(trace=trace, space=space, incumbent=base,
                                                             best_bpb=10.0, iteration=i, seed=0), ask))  # fmt: skip
        assert asked[-1] == {"only": [expected]} and out["changes"] == {expected: 1.0}
        trace.append(record(i, out["changes"], 9.0 if expected == "x1" else 10.5))
    bandit(MechanismView.from_payload(view_payload(trace=trace, space=space, incumbent=base, best_bpb=9.0,
                                                   iteration=4, seed=0), ask))  # fmt: skip
    assert asked[-1] == {"only": ["x1"]}
