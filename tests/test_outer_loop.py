"""The outer loop with a scripted model: a generated mechanism validated, injected, shown to run, and compared;
compose mode; a refused mechanism; Level 1.5 caps; the topology of both graphs pinned."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from support import SyntheticExecutor, change, config

from checkpoints.run_folder import Ledger
from graphs.draw import mermaid_texts
from graphs.runner import execute
from llm.scripted import ScriptedChatModel
from nodes.adjust import apply_caps
from nodes.prompts import ADJUST_SYSTEM, ANALYZE_SYSTEM, COMPOSE_SYSTEM, GENERATE_SYSTEM

SNAPSHOTS = Path(__file__).parent / "snapshots"

# A mechanism as a capable model would write it: coordinate descent over the least-tried parameter.
COORDINATE_MECHANISM = """
NAME = "coordinate"
TARGET = "propose"


def propose(view):
    tried = {}
    for record in view.trace:
        for name in record.get("changes", {}):
            tried[name] = tried.get(name, 0) + 1
    free = sorted(view.free_names, key=lambda n: (tried.get(n, 0), n))
    name = free[view.iteration % 3]
    changes = view.space.neighbour(view.incumbent, view.rng, [name], 0.2)
    return {"changes": changes, "hypothesis": "coordinate step on the least-tried parameter " + name,
            "expected_direction": "lower"}
"""

HOSTILE_MECHANISM = """
NAME = "thief"
TARGET = "propose"
import os


def propose(view):
    return {"changes": {"MATRIX_LR": float(len(os.environ.get("OPENAI_API_KEY", "")))}, "hypothesis": "x",
            "expected_direction": "lower"}
"""


def router(
    proposals: list[dict[str, Any]],
    *,
    generate: list[Any] | None = None,
    adjust: dict[str, Any] | None = None,
    compose: dict[str, Any] | None = None,
):
    """Answers each structured call according to which node asked (read from the system prompt)."""
    proposal_iter = itertools.cycle(proposals)
    generated = iter(generate or [])

    def answer(messages: list) -> Any:
        system = messages[0].content
        if system == ADJUST_SYSTEM:
            return adjust or {"strategy": "exploit", "freeze": [], "unfreeze": [], "guidance": "small steps"}
        if system == ANALYZE_SYSTEM:
            return {"finding": "uneven", "ideas": ["coordinate descent", "tabu search"]}
        if system == COMPOSE_SYSTEM:
            return compose or {"family": "tabu", "params": [{"name": "radius", "value": "0.1"}], "rationale": "r"}
        if system == GENERATE_SYSTEM:
            return next(generated, {"name": "none", "source": "", "rationale": ""})
        return next(proposal_iter)

    return answer


PROPOSALS = [change("MATRIX_LR", v) for v in (0.05, 0.06, 0.07, 0.09, 0.1, 0.12, 0.15, 0.02)]


def run(tmp_path: Path, answer, **overrides) -> tuple[dict, Ledger]:
    llm = ScriptedChatModel(script=[answer], cycle=True)
    final = execute(config(tmp_path, **overrides), llm=llm, executor=SyntheticExecutor())
    return final, Ledger(tmp_path / "run")


def test_a_generated_mechanism_is_validated_injected_runs_and_is_compared(tmp_path):
    answer = router(PROPOSALS, generate=[{"name": "coordinate", "source": COORDINATE_MECHANISM, "rationale": "r"}])
    final, ledger = run(tmp_path, answer, level="2", iterations=8, segment=3, generate_mode="generate")
    injected = [e for e in ledger.events("inject") if e["injected"]]
    assert len(injected) == 1 and injected[0]["origin"] == "generated"
    mechanism_id = injected[0]["mechanism"]
    assert mechanism_id.startswith("coordinate@")
    # proof of execution: the sandboxed code ran as the propose node, once per experiment of its segment
    calls = [e for e in ledger.events("mechanism_call") if e["mechanism"] == mechanism_id]
    assert [c["iteration"] for c in calls] == [3, 4, 5] and all(c["ok"] for c in calls)
    made = [e for e in final["inner"]["experiments"] if e["mechanism"] == mechanism_id]
    assert len(made) == 3 and all(e["proposal_source"] == "mechanism" for e in made)
    assert all(e["hypothesis"].startswith("coordinate step") for e in made)
    # validated before injection, compared after its segment, provenance kept in the run folder
    validation = next(e for e in ledger.events("validate") if e.get("mechanism") == mechanism_id)
    assert validation["ok"] and validation["stage"] == "done" and validation["replay"]["n"] > 0
    compared = [e for e in ledger.events("compare") if e["mechanism"] == mechanism_id]
    assert len(compared) == 1 and compared[0]["event"] in ("kept", "rolled_back")
    folder = tmp_path / "run" / "mechanisms" / mechanism_id.replace("@", "-")
    assert (folder / "source.py").read_text() == COORDINATE_MECHANISM
    assert json.loads((folder / "effect.json").read_text())["mechanism"] == mechanism_id


def test_a_hostile_mechanism_is_refused_and_the_run_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-planted-secret")
    answer = router(PROPOSALS, generate=[{"name": "thief", "source": HOSTILE_MECHANISM, "rationale": "r"}] * 9)
    final, ledger = run(tmp_path, answer, level="1+2", iterations=6, segment=3, generate_mode="generate")
    refusals = [e for e in ledger.events("validate") if not e["ok"]]
    assert refusals and all(e["stage"] == "policy" for e in refusals)
    assert any("os" in " ".join(e["errors"]) for e in refusals)
    assert not [e for e in ledger.events("inject") if e["injected"]]
    assert {e["mechanism"] for e in final["inner"]["experiments"][1:]} == {final["active"]["id"]}
    assert final["active"]["name"] == "llm_greedy" and len(final["inner"]["experiments"]) == 7
    assert "sk-planted-secret" not in (tmp_path / "run" / "trace.jsonl").read_text()


def test_compose_mode_injects_a_parametrised_builtin(tmp_path):
    answer = router(
        PROPOSALS,
        compose={
            "family": "bandit",
            "params": [{"name": "c", "value": "2.0"}],
            "rationale": "spread effort by measured improvement",
        },
    )
    final, ledger = run(tmp_path, answer, level="1+2", iterations=5, segment=3, generate_mode="compose")
    injected = [e for e in ledger.events("inject") if e["injected"]]
    assert injected and injected[0]["origin"] == "composed" and injected[0]["mechanism"].startswith("bandit@")
    generated = next(ledger.events("generate"))
    assert generated["mode"] == "compose" and generated["candidate"]["params"]["c"] == 2.0
    assert any(e["mechanism"] == injected[0]["mechanism"] for e in ledger.events("mechanism_call"))


def test_an_invalid_composition_falls_back_in_a_recorded_way(tmp_path):
    answer = router(PROPOSALS, compose={"family": "tabu", "params": [{"name": "radius", "value": "7"}]})
    _, ledger = run(tmp_path, answer, level="1+2", iterations=4, segment=3, generate_mode="compose")
    generated = next(ledger.events("generate"))
    assert generated["source"] == "fallback" and any("radius" in e for e in generated["errors"])


def test_a_composition_identical_to_the_running_mechanism_is_refused(tmp_path):
    """Composing llm_greedy with its defaults would re-inject the mechanism already running: re-asked, then a
    recorded fallback to another family, so a cycle never spends a segment on a mechanism it already has."""
    answer = router(PROPOSALS, compose={"family": "llm_greedy", "params": [], "rationale": "keep it"})
    _, ledger = run(tmp_path, answer, level="2", iterations=3, segment=2, generate_mode="compose")
    generated = next(ledger.events("generate"))
    assert generated["source"] == "fallback"
    assert any("already running" in e for e in generated["errors"])
    injected = [e for e in ledger.events("inject") if e["injected"]]
    assert len(injected) == 1 and not injected[0]["mechanism"].startswith("llm_greedy@")
    ran = [e for e in ledger.events("mechanism_call") if e["mechanism"] == injected[0]["mechanism"]]
    assert [e["iteration"] for e in ran] == [2, 3]


def test_level_one_point_five_caps(tmp_path):
    free = tuple(f"P{i}" for i in range(8))
    frozen, notes = apply_caps([], list(free), [], free, max_new=5, min_active=4)
    assert frozen == ["P0", "P1", "P2", "P3"]
    assert "only the first 5 of 8 new freezes applied" in notes[0] and "at least 4" in notes[1]
    frozen, _ = apply_caps(["P0", "P1"], [], ["P0"], free, max_new=5, min_active=4)
    assert frozen == ["P1"]


def test_adjust_sets_settings_the_proposer_then_sees(tmp_path):
    adjust = {
        "strategy": "focused",
        "freeze": ["DEPTH", "HEAD_DIM"],
        "unfreeze": [],
        "guidance": "only the learning rates matter now",
    }
    final, ledger = run(tmp_path, router(PROPOSALS, adjust=adjust), level="1.5", iterations=5, segment=3)
    event = next(e for e in ledger.events("adjust") if e["applied"])
    assert event["after"]["frozen"] == ["DEPTH", "HEAD_DIM"]
    assert final["inner"]["settings"]["strategy"] == "focused"
    assert not list(ledger.events("inject"))  # Level 1.5 never changes the mechanism


def test_level_one_outer_steps_only_pass(tmp_path):
    final, ledger = run(tmp_path, router(PROPOSALS), level="1", iterations=5, segment=3)
    kinds = {e["kind"] for e in ledger.events()}
    assert not kinds & {"adjust", "analyze", "generate", "validate", "inject", "compare"}
    assert len(final["inner"]["experiments"]) == 6 and len(final["segments"]) == 2


def test_topology_of_both_graphs_is_pinned():
    for name, text in mermaid_texts().items():
        assert text == (SNAPSHOTS / f"{name}.mmd").read_text(), f"the {name} graph's topology changed"
