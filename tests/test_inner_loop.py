"""The inner loop with a scripted model: keep, discard, crash, re-asks, fallbacks, and the ledger's consistency."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from support import SyntheticExecutor, change, config, synthetic_bpb

from checkpoints.run_folder import Ledger
from graphs.run_config import initial_inner_state, make_context
from graphs.runner import execute
from llm.scripted import ScriptedChatModel
from llm.structured import LLMBudget
from nodes.llm_proposer import ask_llm
from trials.candidate import EditError, apply_edits
from trials.launcher import TRAIN_PATH


def run_inner(tmp_path: Path, script: list, iterations: int, **overrides) -> tuple[dict, SyntheticExecutor]:
    executor = SyntheticExecutor()
    llm = ScriptedChatModel(script=script)
    run_inner.llm = llm  # type: ignore[attr-defined]
    final = execute(config(tmp_path, iterations=iterations, **overrides), llm=llm, executor=executor, inner_only=True)
    return final, executor


def results_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "results.tsv") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_keep_discard_crash_and_the_incumbent_stays_the_best(tmp_path):
    script = [
        change("MATRIX_LR", 0.08),  # closer to the optimum: keep
        change("MATRIX_LR", 0.2),  # worse than the best: discard
        change("WEIGHT_DECAY", 0.45),  # crashes
        change("WARMDOWN_FRAC", 0.7),  # better again, from the best (MATRIX_LR 0.08), not from the crash
    ]
    final, executor = run_inner(tmp_path, script, iterations=4)
    statuses = [e["status"] for e in final["experiments"]]
    assert statuses == ["keep", "keep", "discard", "crash", "keep"]
    assert executor.runs == ["e0000", "e0001", "e0002", "e0003", "e0004"]
    last = final["experiments"][-1]
    assert last["params"]["MATRIX_LR"] == 0.08 and last["params"]["WEIGHT_DECAY"] == 0.0
    assert final["best_bpb"] == synthetic_bpb(last["params"]) and final["best_id"] == "e0004"
    assert final["incumbent"] == last["params"]
    rows = results_rows(tmp_path / "run")
    assert [r["commit"] for r in rows] == ["e0000", "e0001", "e0002", "e0003", "e0004"]
    assert rows[3]["status"] == "crash" and rows[3]["val_bpb"] == "0.000000"
    assert rows[1]["val_bpb"] == f"{synthetic_bpb(final['experiments'][1]['params']):.6f}"
    crash = json.loads((tmp_path / "run" / "experiments" / "e0003" / "outcome.json").read_text())
    assert "diverged" in crash["error"]
    assert "MATRIX_LR = 0.08" in (tmp_path / "run" / "experiments" / "e0004" / "train.py").read_text()
    assert "+WARMDOWN_FRAC = 0.7" in (tmp_path / "run" / "experiments" / "e0004" / "diff.patch").read_text()


def test_every_kind_of_bad_answer_is_re_asked_then_falls_back(tmp_path):
    script = [
        "I think you should raise the learning rate.",  # no tool call
        {"changes": "MATRIX_LR=0.1", "hypothesis": "x", "expected_direction": "lower"},  # wrong schema
        change("NOT_A_PARAM", 1),  # unknown parameter
        change("DEPTH", 99),  # out of range
        change("MATRIX_LR", 0.04),  # the incumbent value: a no-op
        change("MATRIX_LR", "fast"),  # not a number
    ]
    final, _ = run_inner(tmp_path, script, iterations=2)
    ledger = Ledger(tmp_path / "run")
    calls = list(ledger.events("llm_call"))
    assert len(calls) == 6 and not any(c["ok"] for c in calls)
    errors = " | ".join(c["error"] for c in calls)
    for expected in (
        "did not call the tool",
        "did not validate",
        "Input tag 'NOT_A_PARAM'",
        "DEPTH=99",
        "no-op",
        "changes.0.MATRIX_LR.value: Input should be a valid number",
    ):
        assert expected in errors
    sources = [e["proposal_source"] for e in final["experiments"][1:]]
    assert sources == ["fallback", "fallback"]
    assert len(list(ledger.events("proposal_fallback"))) == 2
    for e in final["experiments"][1:]:
        assert len(e["changes"]) == 1  # a recorded, valid one-parameter step


def test_llm_attempts_sets_how_often_a_refused_answer_is_re_asked(tmp_path):
    script = [change("DEPTH", 99), change("MATRIX_LR", 0.05)]
    final, _ = run_inner(tmp_path, script, iterations=2, llm_attempts=1)
    calls = list(Ledger(tmp_path / "run").events("llm_call"))
    assert [c["ok"] for c in calls] == [False, True]  # one answer each: the first falls back at once
    assert [e["proposal_source"] for e in final["experiments"][1:]] == ["fallback", "llm"]


def test_frozen_parameters_are_refused(tmp_path):
    cfg = config(tmp_path)
    cfg.save()
    ledger = Ledger(tmp_path / "run")
    ctx = make_context(
        cfg, ledger, ScriptedChatModel(script=[change("DEPTH", 5), change("MATRIX_LR", 0.08)]), LLMBudget()
    )
    state = initial_inner_state(ctx.space, 5)
    state["settings"] = {"strategy": "explore", "frozen": ["DEPTH"], "guidance": ""}
    state["experiments"] = [{"id": "e0000", "status": "keep", "val_bpb": 2.0, "description": "baseline"}]
    proposal = ask_llm(state, ctx)
    assert proposal["changes"] == {"MATRIX_LR": 0.08}
    # a frozen parameter is not even in the schema the model is given, so naming it fails validation
    [rejection] = proposal["rejected"]
    assert "Input tag 'DEPTH'" in rejection and "'MATRIX_LR'" in rejection


def test_llm_budget_stops_cleanly(tmp_path):
    script = [change("MATRIX_LR", v) for v in (0.08, 0.1, 0.12, 0.14)]
    final, _ = run_inner(tmp_path, script, iterations=4, max_llm_calls=2)
    assert "LLM budget exhausted" in final["stop_reason"]
    assert len(final["experiments"]) == 3
    assert len(results_rows(tmp_path / "run")) == 3


def test_a_finished_run_is_not_run_again(tmp_path):
    final, executor = run_inner(tmp_path, [change("MATRIX_LR", 0.08)], iterations=1)
    again = execute(
        config(tmp_path, iterations=1), llm=ScriptedChatModel(script=[]), executor=executor, inner_only=True
    )
    assert again["experiments"] == final["experiments"]
    assert executor.runs == ["e0000", "e0001"]


def test_a_batch_is_decided_in_id_order_and_each_call_sees_the_running_proposals(tmp_path):
    script = [change("MATRIX_LR", v) for v in (0.2, 0.08, 0.06, 0.1, 0.12, 0.15)]
    final, executor = run_inner(tmp_path, script, iterations=6, batch=3)
    ids = [e["id"] for e in final["experiments"]]
    assert ids == [f"e{i:04d}" for i in range(7)]
    assert executor.runs == ids
    first_batch = final["experiments"][1:4]
    # decided in id order against the best so far: 0.2 is worse than the baseline, 0.08 a new best, 0.06 not better
    assert [e["status"] for e in first_batch] == ["discard", "keep", "discard"]
    assert final["best_id"] == "e0002"
    ledger = Ledger(tmp_path / "run")
    calls = [e for e in ledger.events("mechanism_call")]
    assert [c["iteration"] for c in calls] == [1, 2, 3, 4, 5, 6]
    # the second call of the first batch was shown the first proposal as running
    second_prompt = run_inner.llm.calls[1][-1].content  # type: ignore[attr-defined]
    assert "e0001 running" in second_prompt and "MATRIX_LR=0.2" in second_prompt


def test_code_mode_refuses_edits_of_the_locked_parts_and_trains_the_others(tmp_path):
    touch_clock = {
        "edits": [{"search": "while not clock.done():", "replace": "while True:"}],
        "hypothesis": "train for longer than the budget",
        "expected_direction": "lower",
    }
    touch_data = {
        "edits": [{"search": "run.args.seed)", "replace": "0)"}],
        "hypothesis": "x",
        "expected_direction": "lower",
    }
    reach_out = {
        "edits": [{"search": "import math", "replace": "import math\nimport os"}],
        "hypothesis": "x",
        "expected_direction": "lower",
    }
    gelu = {
        "edits": [
            {
                "search": "return self.down(F.relu(self.up(x)).square())",
                "replace": "return self.down(F.gelu(self.up(x)))",
            }
        ],
        "hypothesis": "GELU trains faster than ReLU^2 at this size",
        "expected_direction": "lower",
    }
    with pytest.raises(EditError, match="locked evaluation, data split"):
        apply_edits(TRAIN_PATH.read_text(), touch_data["edits"])
    final, executor = run_inner(tmp_path, [touch_clock, reach_out, gelu], iterations=1, mode="code")
    errors = [e["error"] for e in Ledger(tmp_path / "run").events("llm_call") if not e["ok"]]
    assert len(errors) == 2
    assert "locked evaluation, data split, time budget or result reporting" in errors[0]
    assert "may not introduce os" in errors[1]
    trained = final["experiments"][1]
    assert trained["edits"] == gelu["edits"] and trained["status"] in ("keep", "discard")
    source = (tmp_path / "run" / "experiments" / "e0001" / "train.py").read_text()
    assert "F.gelu(self.up(x))" in source and "while not clock.done():" in source
    assert (
        "+        return self.down(F.gelu(self.up(x)))"
        in (tmp_path / "run" / "experiments" / "e0001" / "diff.patch").read_text()
    )


def test_an_outcome_is_reused_only_for_the_same_proposal(tmp_path):
    from checkpoints.run_folder import write_json_atomic
    from nodes.train import reusable_outcome

    item = {"id": "e0001", "iteration": 1, "params": {"MATRIX_LR": 0.08}, "changes": {"MATRIX_LR": 0.08}}
    write_json_atomic(tmp_path / "proposal.json", item)
    write_json_atomic(tmp_path / "outcome.json", {"ok": True, "result": {"val_bpb": 1.9}})
    assert reusable_outcome(tmp_path, item)["result"]["val_bpb"] == 1.9
    other = {**item, "params": {"MATRIX_LR": 0.1}, "changes": {"MATRIX_LR": 0.1}}
    assert reusable_outcome(tmp_path, other) is None
