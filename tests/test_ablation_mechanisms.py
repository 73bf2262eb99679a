"""The classical baselines as built-in propose mechanisms: whole configurations (the declared cap), determinism,
memory from the trace only, and a run through `execute` that never asks the LLM."""

from __future__ import annotations

import random
from typing import Any

import pytest
from support import SyntheticExecutor, config

from ablation.harness import NO_MODEL, Ablation, AblationSpec
from checkpoints.run_folder import Ledger
from graphs.runner import execute
from llm.scripted import ScriptedChatModel
from mechanisms.base import (
    BASELINE_NAMES,
    BUILTIN_NAMES,
    MechanismView,
    check_proposal,
    load_builtin,
    proposal_cap,
    view_payload,
)
from mechanisms.builtin.tpe import distributions, history
from mechanisms.space import MAX_CHANGES, SearchSpace
from nodes.mechanism_loader import builtin_record, compose_families
from trials.launcher import TRAIN_PATH

SPACE = SearchSpace.from_train_source(TRAIN_PATH.read_text())
BASE = SPACE.defaults()


def trace(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    records = []
    for i in range(n):
        params = BASE if i == 0 else SPACE.sample(rng)
        crash = i % 5 == 4
        records.append(
            {
                "id": f"e{i:04d}",
                "iteration": i,
                "params": params,
                "changes": {},
                "status": "crash" if crash else "discard",
                "val_bpb": None if crash else 3.0 + rng.random(),
            }
        )
    return records


def view(records: list[dict[str, Any]], seed: int, frozen: tuple[str, ...] = ()) -> MechanismView:
    payload = view_payload(
        trace=records,
        space=SPACE,
        incumbent=BASE,
        best_bpb=3.0,
        iteration=len(records),
        seed=seed,
        settings={"frozen": list(frozen)},
    )
    return MechanismView.from_payload(payload, lambda guidance, constraints: {})


def test_the_cap_is_declared_by_the_module_and_kept_for_everything_else() -> None:
    step = SPACE.neighbour(BASE, random.Random(0), list(SPACE.free_names())[:5], 0.3)
    five = {k: v for k, v in SPACE.repair({**BASE, **step}).items() if k in step}  # train.py's batch rule holds
    assert len(five) == 5
    assert SPACE.check_changes(five, BASE) == [f"5 changes: at most {MAX_CHANGES} per proposal"]
    assert SPACE.check_changes(five, BASE, max_changes=None) == []
    assert proposal_cap("random_search", "builtin") is None and proposal_cap("tpe", "builtin") is None
    assert proposal_cap("tabu", "composed") == MAX_CHANGES and proposal_cap("llm_greedy", "builtin") == MAX_CHANGES
    assert proposal_cap("random_search", "generated") == MAX_CHANGES  # a generated module cannot lift the rule
    # the baselines are not composable: the outer loop never sees them, the contract tests of BUILTIN_NAMES hold
    assert not set(BASELINE_NAMES) & set(BUILTIN_NAMES) and not set(BASELINE_NAMES) & set(compose_families())
    assert builtin_record("tpe")["target"] == "propose"


@pytest.mark.parametrize("name", ["random_search", "tpe", "cma_es"])  # local_search: one step; centaur asks the LLM
def test_baselines_propose_whole_configurations_deterministically(name: str) -> None:
    mech = load_builtin(name)
    records = trace(14)
    first = [mech(view(records[:k], seed=k)) for k in range(1, 14)]
    again = [mech(view(records[:k], seed=k)) for k in reversed(range(1, 14))][::-1]  # no memory between calls
    assert first == again
    assert any(len(out["changes"]) > MAX_CHANGES for out in first)
    for k, out in enumerate(first, start=1):
        v = view(records[:k], seed=k)
        assert check_proposal(out, v, None) == [], out
        assert all(SPACE.check_values({n: x}) == [] for n, x in out["changes"].items())
    assert mech(view(records, seed=1)) != mech(view(records, seed=2))
    frozen = mech(view(records, seed=3, frozen=("DEPTH", "OPTIMIZER")))
    assert not {"DEPTH", "OPTIMIZER"} & set(frozen["changes"])


def test_tpe_memory_is_the_trace_and_crashes_are_infeasible() -> None:
    records = trace(12)
    v = view(records, seed=0)
    trials = history(v, distributions(v))
    assert len(trials) == len(records)
    crashed = [t.constraints["crashed"] for t, r in zip(trials, records, strict=True) if r["status"] == "crash"]
    assert crashed == [1.0, 1.0] and sum(t.constraints["crashed"] for t in trials) == 2.0
    mech = load_builtin("tpe")
    assert mech(view(records, seed=5)) != mech(view(records[:6], seed=5))  # a longer trace, another proposal


def test_a_baseline_runs_through_execute_without_the_llm(tmp_path) -> None:
    run_config = config(tmp_path, level="1", iterations=6, segment=3, mechanism="tpe")
    ablation = Ablation.open(tmp_path / "abl", AblationSpec(groups=["tpe"], repeats=1, iterations=6))
    with ablation.llms(None) as chat_for:  # the harness's own choice: no server, a model that fails if asked
        llm = chat_for(run_config)
    assert isinstance(llm, ScriptedChatModel) and "llm" not in ablation.manifest
    final = execute(run_config, llm=llm, executor=SyntheticExecutor())
    experiments = final["inner"]["experiments"]
    assert len(experiments) == 7 and not llm.calls
    assert {e["mechanism"].split("@")[0] for e in experiments[1:]} == {"tpe"}
    assert max(len(e["changes"]) for e in experiments[1:]) > MAX_CHANGES
    calls = list(Ledger(tmp_path / "run").events("mechanism_call"))
    assert len(calls) == 6 and all(c["ok"] and c["llm_asks"] == 0 for c in calls)
    assert next(Ledger(tmp_path / "run").events("run_start"))["llm"] == NO_MODEL
