"""The decide node's rules, called directly: what may become the best, and what the ledger rebuilds from them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from support import config

from checkpoints.rebuild import inner_state, trace_events
from checkpoints.run_folder import Ledger
from graphs.run_config import initial_inner_state, make_context
from llm.structured import LLMBudget
from nodes.decide import decide_step
from nodes.state import InnerState


def _outcome(bpb: float) -> dict[str, Any]:
    return {"status": "ok", "result": {"val_bpb": bpb, "training_seconds": 1.0}, "wall_seconds": 1.0}


def _item(index: int, params: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"e{index:04d}", "iteration": index, "params": params, "changes": changes, "source": "test"}


def _decide_all(tmp_path: Path, margin: float, results: list[float]) -> tuple[dict[str, Any], Path]:
    cfg = config(tmp_path, noise_margin=margin)
    run_dir = Path(cfg.run_dir)
    ledger = Ledger(run_dir)
    ctx = make_context(cfg, ledger, llm=None, budget=LLMBudget())
    state: dict[str, Any] = dict(initial_inner_state(ctx.space, stop_at=len(results)))
    defaults = ctx.space.defaults()
    for index, bpb in enumerate(results):
        params = {**defaults, "MATRIX_LR": defaults["MATRIX_LR"] * (1 + index / 10)}
        state["batch"] = [_item(index, params, {} if index == 0 else {"MATRIX_LR": params["MATRIX_LR"]})]
        state["outcomes"] = [_outcome(bpb)]
        state.update(decide_step(state, ctx, None))  # type: ignore[arg-type]
    return state, run_dir


def test_a_result_discarded_within_the_noise_margin_does_not_become_the_best(tmp_path: Path) -> None:
    # 2.00 baseline; 1.99 is better but within the 0.02 margin: discarded, and the bar stays 2.00 (the incumbent's).
    state, _ = _decide_all(tmp_path, 0.02, [2.00, 1.99, 1.975])
    statuses = [e["status"] for e in state["experiments"]]
    assert statuses == ["keep", "discard", "keep"]
    assert state["best_id"] == state["incumbent_id"] == "e0002"
    assert state["best_bpb"] == 1.975


def test_the_best_is_the_incumbent_after_a_discard_within_the_margin(tmp_path: Path) -> None:
    state, _ = _decide_all(tmp_path, 0.02, [2.00, 1.99])
    assert state["best_bpb"] == 2.00 and state["best_id"] == state["incumbent_id"] == "e0000"


def test_the_ledger_rebuilds_the_same_state_with_the_keys_the_graph_reads(tmp_path: Path) -> None:
    state, run_dir = _decide_all(tmp_path, 0.02, [2.00, 1.99, 1.975, 2.5])
    rebuilt = inner_state(trace_events(run_dir), defaults={}, stop_at=10)
    for key in ("incumbent", "incumbent_id", "best_bpb", "best_id"):
        assert rebuilt[key] == state[key], key
    assert rebuilt["batch"] == [] and rebuilt["outcomes"] == []
    assert "pending" not in rebuilt and "outcome" not in rebuilt
    assert set(rebuilt) <= set(InnerState.__annotations__)  # LangGraph drops keys the state does not declare


def test_a_decide_mechanism_named_at_start_runs_as_decide_and_the_model_still_proposes(tmp_path: Path) -> None:
    from support import SyntheticExecutor, change

    from graphs.runner import execute
    from llm.scripted import ScriptedChatModel

    script = [change("MATRIX_LR", v) for v in (0.05, 0.03, 0.06)]
    final = execute(
        config(tmp_path, iterations=3, mechanism="annealing"),
        llm=ScriptedChatModel(script=script),
        executor=SyntheticExecutor(),
        inner_only=True,
    )
    experiments = final["experiments"]
    assert [e["params"]["MATRIX_LR"] for e in experiments[1:]] == [0.05, 0.03, 0.06]  # proposed, not the incumbent
    assert all(e["mechanism"].startswith("llm_greedy@") for e in experiments[1:])  # the model still proposes
    calls = list(Ledger(tmp_path / "run").events("mechanism_call"))
    decide_calls = [c for c in calls if str(c.get("mechanism", "")).startswith("annealing@")]
    assert len(decide_calls) == 3 and all(c.get("ok") for c in decide_calls)  # one judgement per experiment
    assert final["mechanisms"]["decide"]["name"] == "annealing"
    assert all("improved" in e["reason"] or "T=" in e["reason"] for e in experiments[1:])
