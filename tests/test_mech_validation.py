"""validate_mechanism: policy, load, contract test and counterfactual replay, in the sandbox."""

import json

import pytest

from mechanisms.base import BUILTIN_NAMES, builtin_source
from mechanisms.space import SearchSpace
from mechanisms.validation import ScriptedLLM, contract_payloads, synthetic_trace, validate_mechanism

SPACE = SearchSpace.from_train_source(
    "# ---- hyperparameters: the inner loop edits this block ----\n"
    "DEPTH = 4                  # int [1, 12]\n"
    "MATRIX_LR = 0.02           # float [0.001, 0.2] log\n"
    'OPTIMIZER = "muon"         # choice ["muon", "adamw"]\n'
    "TOTAL_BATCH_SIZE = 2**14   # int [2**10, 2**20] log\n"
    "# ---- end of hyperparameters ----\n"
)
TRACE = [{**r, "id": f"e{i:04d}", "iteration": i} for i, r in enumerate(synthetic_trace(SPACE, 1) * 2)]
HEADER = 'NAME = "candidate"\nTARGET = "propose"\n'

GOOD = (
    HEADER
    + """
def propose(view):
    proposal = view.ask_llm("focus on the learning rate", constraints={"only": ["MATRIX_LR"]})
    if view.check_changes(proposal["changes"]):
        step = view.space.neighbour(view.incumbent, view.rng, ["MATRIX_LR"], 0.1)
        return {"changes": step, "hypothesis": "step", "expected_direction": "down"}
    return proposal
"""
)
NON_DETERMINISTIC = (
    HEADER
    + """
import random

def propose(view):
    name = random.choice(view.free_names)
    step = view.space.neighbour(view.incumbent, random.Random(), [name], 0.3)
    return {"changes": step, "hypothesis": "unseeded", "expected_direction": "down"}
"""
)
HIDDEN_STATE = (
    HEADER
    + """
SEEN = []

def propose(view):
    SEEN.append(1)
    names = list(view.free_names)
    step = view.space.neighbour(view.incumbent, view.rng, [names[len(SEEN) % len(names)]], 0.2)
    return {"changes": step, "hypothesis": "memory outside the trace", "expected_direction": "down"}
"""
)
CONSTANT = (
    HEADER
    + """
def propose(view):
    return {"changes": {"OPTIMIZER": "adamw"}, "hypothesis": "always", "expected_direction": "down"}
"""
)
NO_OP = (
    HEADER
    + """
def propose(view):
    return {"changes": {}, "hypothesis": "nothing", "expected_direction": "none"}
"""
)
WRONG_KEYS = (
    HEADER
    + """
def propose(view):
    return {"changes": {"matrix_lr": view.rng.random()}, "hypothesis": "lowercase keys", "expected_direction": "down"}
"""
)


def test_accepts_a_good_mechanism() -> None:
    report = validate_mechanism(GOOD, SPACE, TRACE, seed=3)
    assert report.ok and report.stage == "done", report.errors
    assert report.name == "candidate" and report.target == "propose" and len(report.sha256 or "") == 64
    assert report.replay["n"] == len(TRACE) + 1 and report.replay["distinct"] > 1
    assert report.replay["changed_vs_llm"] == report.replay["n"]  # it always constrains the LLM to MATRIX_LR
    assert report.llm_calls > 0 and set(report.timings) >= {"policy", "contract", "replay", "max_view_s"}
    json.dumps(report.to_dict())


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_every_builtin_validates(name: str) -> None:
    report = validate_mechanism(builtin_source(name), SPACE, TRACE, seed=0, max_replay=4)
    assert report.ok, report.errors


@pytest.mark.parametrize(
    ("source", "stage", "fragment"),
    [
        (NON_DETERMINISTIC, "contract", "not deterministic"),
        (HIDDEN_STATE, "contract", "not deterministic"),
        (CONSTANT, "replay", "same output for every view"),
        (NO_OP, "contract", "no changes"),
        (WRONG_KEYS, "contract", "did you mean MATRIX_LR"),
        (HEADER + "import os\ndef propose(view):\n    return {}\n", "policy", "'os' is forbidden"),
        (HEADER + "def propose(view):\n    return 1 / 0\n", "contract", "ZeroDivisionError"),
        (HEADER + "X = [0] * (1 << 40)\ndef propose(view):\n    return {}\n", "contract", "memory"),
    ],
)
def test_refuses_bad_mechanisms(source: str, stage: str, fragment: str) -> None:
    report = validate_mechanism(source, SPACE, TRACE, seed=3, max_replay=4)
    assert not report.ok and report.stage == stage
    assert any(fragment in e for e in report.errors), report.errors


def test_decide_contract_uses_better_worse_and_crash_results() -> None:
    payloads = contract_payloads(SPACE, "decide", 0, {})
    results = [p["result"] for p in payloads[1:]]
    assert [r["status"] for r in results] == ["discard", "discard", "crash"]
    assert results[0]["val_bpb"] < payloads[1]["best_bpb"] < results[1]["val_bpb"]


def test_scripted_llm_is_valid_and_honours_constraints() -> None:
    payloads = contract_payloads(SPACE, "propose", 0, {"frozen": ["DEPTH"]})
    llm = ScriptedLLM(SPACE, payloads, 0)
    for i, p in enumerate(payloads):
        answer = llm(i, "", {"only": ["OPTIMIZER", "DEPTH"]})
        assert answer["changes"] == {"OPTIMIZER": "adamw" if p["incumbent"]["OPTIMIZER"] == "muon" else "muon"}
        other = llm(i, "", None)
        assert SPACE.check_changes(other["changes"], p["incumbent"], ["DEPTH"]) == []
