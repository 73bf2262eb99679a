"""The strong classical baselines and the hybrid: CMA-ES rebuilt from the trace (crashes infeasible, started at the
default), TPE started at the default with crashes infeasible, centaur (every third proposal the LLM's), and their
ablation groups on the same harness."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
from support import SyntheticExecutor, change

from ablation.harness import BASELINES, GROUP_NAMES, HYBRIDS, Ablation, AblationSpec
from checkpoints.run_folder import Ledger
from llm.scripted import ScriptedChatModel
from mechanisms.base import MechanismView, check_proposal, load_builtin, proposal_cap, view_payload
from mechanisms.builtin import cma_es, tpe
from mechanisms.space import SearchSpace
from trials.launcher import TRAIN_PATH

SPACE = SearchSpace.from_train_source(TRAIN_PATH.read_text())
BASE = SPACE.defaults()


def view(records: list[dict[str, Any]], seed: int, incumbent: dict[str, Any] | None = None, ask: Any = None):
    payload = view_payload(
        trace=records, space=SPACE, incumbent=incumbent or BASE, best_bpb=3.0, iteration=len(records), seed=seed
    )
    return MechanismView.from_payload(payload, ask or (lambda guidance, constraints: {}))


def grow(name: str, n: int, crash_every: int = 4, seed: int = 0) -> list[dict[str, Any]]:
    """A trace of ``n`` experiments after the baseline, proposed by the mechanism ``name`` itself."""
    rng = random.Random(seed)
    mech = load_builtin(name)
    records = [{"id": "e0000", "iteration": 0, "params": BASE, "status": "keep", "val_bpb": 3.0}]
    for i in range(1, n + 1):
        out = mech(view(records, seed=i))
        crash = i % crash_every == 0
        records.append(
            {
                "id": f"e{i:04d}",
                "iteration": i,
                "params": {**BASE, **out["changes"]},
                "status": "crash" if crash else "discard",
                "val_bpb": None if crash else 3.0 + rng.random(),
            }
        )
    return records


def test_cma_es_starts_at_the_default_with_a_small_step() -> None:
    records = grow("cma_es", 0)
    cma = cma_es.optimizer(view(records, seed=1), seed=1)
    names = list(SPACE.free_names())
    assert np.allclose(cma.mean, cma_es.encode(SPACE, names, BASE)) and cma.generation == 0
    draws = np.array([cma.ask() for _ in range(200)])
    spread = np.std(draws - cma.mean, axis=0)
    assert np.all(spread < 2 * cma_es.SIGMA0) and np.mean(spread) > 0.5 * cma_es.SIGMA0
    assert proposal_cap("cma_es", "builtin") is None and proposal_cap("centaur", "builtin") is None


def test_cma_es_state_is_a_function_of_the_trace_and_crashes_rank_last() -> None:
    records = grow("cma_es", 30)
    size = cma_es.optimizer(view(records[:1], seed=0), seed=0).population_size
    assert size == 4 + int(3 * np.log(len(SPACE.free_names())))
    a = cma_es.optimizer(view(records, seed=1), seed=1)
    b = cma_es.optimizer(view(records, seed=2), seed=2)  # the seed draws; the state is the trace's
    assert a.generation == b.generation == len(records) // size
    assert np.allclose(a.mean, b.mean) and np.allclose(a._C, b._C) and a._sigma == b._sigma
    # a crash is told worse than every finite value of the trace
    penalty = cma_es.crash_value(records)
    assert penalty > max(r["val_bpb"] for r in records if r["val_bpb"] is not None)
    told = cma_es.told(records)
    assert [v for (_, v), r in zip(told, records, strict=True) if r["status"] == "crash"] == [penalty] * 7
    # replacing the crashes' penalty by a better value moves the mean elsewhere: the crashes were told
    fixed = [{**r, "status": "discard", "val_bpb": 2.0} if r["status"] == "crash" else r for r in records]
    assert not np.allclose(cma_es.optimizer(view(fixed, seed=1), seed=1).mean, a.mean)
    # a running experiment holds its generation open: nothing after it is told
    running = [*records[: size + 2], {**records[size + 2], "status": "running", "val_bpb": None}]
    assert cma_es.optimizer(view(running, seed=1), seed=1).generation == 1


def test_cma_es_proposals_are_new_deterministic_and_whole() -> None:
    records = grow("cma_es", 20)
    mech = load_builtin("cma_es")
    out = mech(view(records, seed=7))
    assert out == mech(view(records, seed=7)) and out != mech(view(records, seed=8))
    assert check_proposal(out, view(records, seed=7), None) == [] and len(out["changes"]) > 3
    trained = {cma_es_key(r["params"]) for r in records}
    assert cma_es_key({**BASE, **out["changes"]}) not in trained


def cma_es_key(params: dict[str, Any]) -> str:
    from mechanisms.builtin.local_search import config_key

    return config_key(SPACE, params)


def test_tpe_starts_at_the_default_and_crashes_are_infeasible() -> None:
    records = grow("tpe", 12)
    v = view(records, seed=0)
    trials = tpe.history(v, tpe.distributions(v))
    assert trials[0].params == {k: BASE[k] for k in tpe.distributions(v)}  # the baseline: the first trial
    assert [t.constraints["crashed"] for t in trials] == [1.0 if r["status"] == "crash" else 0.0 for r in records]
    assert tpe.starts_at_default(v, tpe.distributions(v), trials) == {}
    # a trace without the default (the incumbent elsewhere): the default is enqueued as the next trial
    moved = {**BASE, "MATRIX_LR": 0.05}
    w = view(records[1:], seed=3, incumbent=moved)
    assert load_builtin("tpe")(w)["changes"] == {"MATRIX_LR": BASE["MATRIX_LR"]}


def test_centaur_asks_the_llm_every_third_proposal() -> None:
    asked: list[str] = []

    def ask(guidance: str, constraints: Any) -> dict[str, Any]:
        asked.append(guidance)
        return {"changes": {"MATRIX_LR": 0.05}, "hypothesis": "h", "expected_direction": "lower"}

    mech = load_builtin("centaur")
    records = grow("cma_es", 8)
    outs = []
    for i in range(1, 9):
        payload = view_payload(
            trace=records[:i], space=SPACE, incumbent=BASE, best_bpb=3.0, iteration=i, seed=i, settings={}
        )
        outs.append(mech(MechanismView.from_payload(payload, ask)))
    assert len(asked) == 2 and [o["changes"] == {"MATRIX_LR": 0.05} for o in outs] == [i % 3 == 0 for i in range(1, 9)]
    assert all(len(o["changes"]) > 3 for i, o in enumerate(outs, start=1) if i % 3)


def test_the_new_groups_run_on_the_harness_paired(tmp_path) -> None:
    assert {"cmaes", "centaur", "tpe", "local"} <= set(GROUP_NAMES)
    assert BASELINES["cmaes"] == "cma_es" and HYBRIDS["centaur"] == "centaur"
    spec = AblationSpec(groups=["cmaes", "centaur"], repeats=2, iterations=6, segment=3, budget_s=1.0, noise_repeats=0)
    ablation = Ablation.open(tmp_path / "abl", spec)
    models: list[ScriptedChatModel] = []

    def llm_for(config: Any) -> ScriptedChatModel:
        models.append(ScriptedChatModel(script=[change("MATRIX_LR", v) for v in (0.05, 0.03, 0.06)], cycle=True))
        return models[-1]

    with ablation.llms(None) as chat_for:  # the harness's own choice for a no-model group
        assert isinstance(chat_for(spec.run_config(tmp_path, "cmaes", 0)), ScriptedChatModel)
    assert ablation.run(llm_for=llm_for, executor=SyntheticExecutor(), log=lambda line: None)
    runs = ablation.manifest["runs"]
    assert {rid: e["seed"] for rid, e in runs.items()} == {
        "cmaes-r00": 0,
        "centaur-r00": 0,
        "cmaes-r01": 1,
        "centaur-r01": 1,
    }
    for rid in runs:
        calls = list(Ledger(ablation.root / "runs" / rid).events("mechanism_call"))
        assert len(calls) == 6 and all(c["ok"] for c in calls)
        asks = [c["llm_asks"] for c in calls]
        assert asks == ([0, 0, 1, 0, 0, 1] if rid.startswith("centaur") else [0] * 6), (rid, asks)
