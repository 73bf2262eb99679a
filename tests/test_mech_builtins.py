"""Built-in mechanisms on synthetic traces, run in-process through load_builtin (trusted code)."""

import math
import random
from typing import Any

import pytest

from mechanisms.base import (
    BUILTIN_NAMES,
    MechanismError,
    MechanismSpec,
    MechanismView,
    builtin_catalog,
    builtin_source,
    builtin_spec,
    check_decision,
    check_proposal,
    load_builtin,
    view_payload,
)
from mechanisms.policy import check_source
from mechanisms.space import SearchSpace

SAMPLE = """
# ---- hyperparameters: the inner loop edits this block ----
DEPTH = 4                  # int [1, 12]
MATRIX_LR = 0.02           # float [0.001, 0.2] log
OPTIMIZER = "muon"         # choice ["muon", "adamw"]
TOTAL_BATCH_SIZE = 2**14   # int [2**10, 2**20] log
WARMUP_RATIO = 0.1         # float [0, 0.5]
# ---- end of hyperparameters ----
"""
SPACE = SearchSpace.from_train_source(SAMPLE)
BASE = SPACE.defaults()


class Asker:
    """A scripted ask_llm: returns the queued answers in order (the last one repeats) and records the requests."""

    def __init__(self, *answers: dict[str, Any]) -> None:
        self.answers = list(answers)
        self.requests: list[tuple[str, dict[str, Any] | None]] = []

    def __call__(self, guidance: str, constraints: dict[str, Any] | None) -> dict[str, Any]:
        self.requests.append((guidance, constraints))
        changes = self.answers[min(len(self.requests), len(self.answers)) - 1]
        return {"changes": dict(changes), "hypothesis": "llm", "expected_direction": "down"}


def record(i: int, changes: dict[str, Any], bpb: float | None, status: str, base: dict[str, Any] = BASE) -> dict:
    return {"id": f"e{i:04d}", "iteration": i, "params": {**base, **changes}, "changes": changes, "hypothesis": "h",
            "val_bpb": bpb, "status": status, "mechanism": "test", "seconds": 1.0, "description": ""}  # fmt: skip


def view(trace: list[dict], ask: Asker | None = None, seed: int = 0, **extra: Any) -> MechanismView:
    payload = view_payload(trace=trace, space=SPACE, incumbent=extra.pop("incumbent", BASE),
                           best_bpb=extra.pop("best_bpb", 1.5), iteration=len(trace), seed=seed, **extra)  # fmt: skip
    return MechanismView.from_payload(payload, ask or Asker({"DEPTH": 5}))


def test_every_builtin_passes_the_policy_and_declares_its_schema() -> None:
    catalog = {entry["name"]: entry for entry in builtin_catalog()}
    assert tuple(catalog) == BUILTIN_NAMES
    for name in BUILTIN_NAMES:
        assert check_source(builtin_source(name)).ok, name
    assert {p["name"] for p in catalog["tabu"]["params"]} == {"radius", "tenure", "retries", "scale"}
    assert catalog["annealing"]["target"] == "decide"
    spec = builtin_spec("tabu", radius="0.1")
    assert spec.origin == "composed" and spec.params["radius"] == 0.1 and spec.id.startswith("tabu@")
    assert MechanismSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(MechanismError, match="outside"):
        load_builtin("tabu", radius=3.0)
    with pytest.raises(MechanismError, match="unknown parameter"):
        load_builtin("tabu", radiu=0.1)
    with pytest.raises(MechanismError, match="unknown built-in"):
        load_builtin("gp")


def test_view_is_read_only() -> None:
    v = view([record(0, {}, 1.5, "keep")])
    with pytest.raises(TypeError):
        v.trace[0]["status"] = "discard"  # type: ignore[index]
    with pytest.raises(TypeError):
        v.incumbent["DEPTH"] = 9  # type: ignore[index]


def test_llm_greedy_passes_the_settings_guidance() -> None:
    ask = Asker({"DEPTH": 6})
    out = load_builtin("llm_greedy")(view([], ask, settings={"guidance": "try the batch"}))
    assert out["changes"] == {"DEPTH": 6} and ask.requests == [("try the batch", None)]


def test_tabu_refuses_a_visited_config_and_reask() -> None:
    trace = [record(0, {}, 1.5, "keep"), record(1, {"DEPTH": 6}, 1.6, "discard")]
    ask = Asker({"DEPTH": 6}, {"MATRIX_LR": 0.05})
    out = load_builtin("tabu")(view(trace, ask))
    assert out["changes"] == {"MATRIX_LR": 0.05}
    assert len(ask.requests) == 2 and "DEPTH=6" in ask.requests[1][0] and "Tabu" in ask.requests[1][0]


def test_tabu_falls_back_outside_the_tabu_region() -> None:
    trace = [record(0, {}, 1.5, "keep"), record(1, {"DEPTH": 6}, 1.6, "discard")]
    ask = Asker({"DEPTH": 6}, {"DEPTH": 4}, {"DEPTH": 6})  # tabu, no-op, tabu
    v = view(trace, ask, seed=7)
    out = load_builtin("tabu", retries=2)(v)
    assert len(ask.requests) == 3 and "tabu fallback" in out["hypothesis"]
    assert check_proposal(out, v) == []
    config = SPACE.apply(BASE, out["changes"])
    assert all(SPACE.distance(config, r["params"]) > 0.05 for r in trace)


def test_bandit_explores_then_exploits_the_best_group() -> None:
    explore = load_builtin("bandit")(view([record(0, {}, 1.5, "keep")], ask := Asker({"DEPTH": 5})))
    assert ask.requests[0][1] == {"only": ["DEPTH"]} and explore["changes"] == {"DEPTH": 5}
    trace = [record(0, {}, 1.5, "keep")]
    trace.append(record(1, {"DEPTH": 5}, 1.55, "discard"))
    trace.append(record(2, {"MATRIX_LR": 0.03}, 1.40, "keep"))
    trace.append(record(3, {"TOTAL_BATCH_SIZE": 8192}, 1.52, "discard"))
    trace.append(record(4, {"WARMUP_RATIO": 0.2}, None, "crash"))
    ask = Asker({"OPTIMIZER": "adamw"})
    out = load_builtin("bandit", c=0.1)(view(trace, ask, best_bpb=1.40))
    assert ask.requests[0][1] == {"only": ["MATRIX_LR", "OPTIMIZER"]} and out["changes"] == {"OPTIMIZER": "adamw"}


def test_bandit_falls_back_to_a_step_in_the_group_when_the_llm_strays() -> None:
    trace = [record(0, {}, 1.5, "keep")]
    v = view(trace, Asker({"MATRIX_LR": 0.05}))  # the chosen group is architecture: DEPTH only
    out = load_builtin("bandit")(v)
    assert set(out["changes"]) == {"DEPTH"} and check_proposal(out, v) == []


def test_bandit_thompson_is_seeded() -> None:
    trace = [record(0, {}, 1.5, "keep")] + [record(i, {n: v}, 1.6, "discard") for i, (n, v) in enumerate(
        [("DEPTH", 5), ("MATRIX_LR", 0.03), ("TOTAL_BATCH_SIZE", 8192), ("WARMUP_RATIO", 0.2)], start=1)]  # fmt: skip
    picks = [load_builtin("bandit", policy="thompson")(view(trace, Asker({"DEPTH": 5}), seed=s)) for s in (1, 1, 2)]
    assert picks[0] == picks[1]


def test_doe_walks_untested_rows() -> None:
    trace = [record(0, {}, 1.5, "keep")]
    doe = load_builtin("doe", design="L4", factors=2)
    seen = []
    for i in range(1, 8):
        ask = Asker({"DEPTH": 7})
        out = doe(view(trace, ask))
        if ask.requests:
            break
        assert out["changes"] not in seen and set(out["changes"]) <= {"DEPTH", "MATRIX_LR"}
        seen.append(out["changes"])
        trace.append(record(i, out["changes"], 1.6, "discard"))
    assert len(seen) == 4  # L4 over two 2-level factors: four distinct rows, then the LLM with the results
    assert out["changes"] == {"DEPTH": 7} and "design around the incumbent is complete" in ask.requests[0][0]


def test_annealing_acceptance_probability() -> None:
    anneal = load_builtin("annealing", t0=0.01, decay=1.0)
    result = record(3, {"DEPTH": 5}, 1.51, "discard")  # worse by 0.01 at T = 0.01: p = exp(-1)
    keeps = [anneal(view([], seed=s, best_bpb=1.5, result=result))["keep"] for s in range(400)]
    assert sum(keeps) / len(keeps) == pytest.approx(math.exp(-1), abs=0.06)
    for s in range(20):
        expected = random.Random(s).random() < math.exp(-1)
        decision = anneal(view([], seed=s, best_bpb=1.5, result=result))
        assert decision["keep"] == expected and check_decision(decision) == []
    crash = record(4, {"DEPTH": 5}, None, "crash")
    assert not any(anneal(view([], seed=s, best_bpb=1.5, result=crash))["keep"] for s in range(50))
    better = record(5, {"DEPTH": 5}, 1.4, "discard")
    assert anneal(view([], best_bpb=1.5, result=better))["keep"]
    cold = load_builtin("annealing", t0=1e-5, decay=0.5)
    assert not any(cold(view([], seed=s, best_bpb=1.5, result=result))["keep"] for s in range(50))


def test_stagnation_switches_after_patience() -> None:
    trace = [record(0, {}, 1.5, "keep"), record(1, {"DEPTH": 5}, 1.4, "keep")]
    stag = load_builtin("stagnation", patience=3)
    ask = Asker({"MATRIX_LR": 0.05})
    assert stag(view(trace, ask))["changes"] == {"MATRIX_LR": 0.05} and ask.requests[0][1] is None
    for i in range(2, 5):
        trace.append(record(i, {"DEPTH": 6}, 1.45, "discard"))
    ask = Asker({"DEPTH": 7})  # strays outside the untouched names: the mechanism steps itself
    v = view(trace, ask, incumbent={**BASE, "DEPTH": 5}, best_bpb=1.4)
    out = stag(v)
    assert "no improvement for 3 experiments" in out["hypothesis"] and check_proposal(out, v) == []
    assert ask.requests[0][1] == {"only": ["MATRIX_LR", "OPTIMIZER", "TOTAL_BATCH_SIZE"]}
    assert "DEPTH" not in out["changes"]
    trace.append(record(5, {"DEPTH": 6}, 1.45, "discard"))
    out = stag(view(trace, Asker({"DEPTH": 7}), incumbent={**BASE, "DEPTH": 5}, best_bpb=1.4))
    assert "larger steps" in out["hypothesis"] and len(out["changes"]) == 2


@pytest.mark.parametrize("name", [n for n in BUILTIN_NAMES if n != "annealing"])
def test_proposers_are_valid_and_deterministic(name: str) -> None:
    rng = random.Random(3)
    trace = [record(0, {}, 1.5, "keep")]
    for i in range(1, 12):
        changes = SPACE.neighbour(BASE, rng, rng.sample(SPACE.free_names(), 2), 0.2)
        trace.append(record(i, changes, 1.5 + rng.uniform(-0.05, 0.05), rng.choice(["discard", "crash"])))
    mech = load_builtin(name)
    first = [mech(view(trace[:k], Asker({"DEPTH": 7}, {"OPTIMIZER": "adamw"}), seed=k)) for k in range(12)]
    again = [mech(view(trace[:k], Asker({"DEPTH": 7}, {"OPTIMIZER": "adamw"}), seed=k)) for k in range(12)]
    assert first == again
    for k, out in enumerate(first):
        assert check_proposal(out, view(trace[:k])) == [], (k, out)
