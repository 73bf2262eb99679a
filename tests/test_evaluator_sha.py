"""The evaluator sha256 that `evaluate` checks is computed by the executor in the parent process, from the evaluator
file the training ran with; what a training writes about it in its result is never what is checked."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from checkpoints.run_folder import Ledger
from nodes.evaluate import evaluate
from trials import launcher
from trials.launcher import EVALUATOR_PATH, LocalExecutor, TrainerSettings, Trial, file_sha256

SPLIT = "f" * 64
# A code-mode train.py that writes its own result, claiming whatever evaluator sha256 it is told to.
LIAR = """
import json, sys
path = sys.argv[sys.argv.index("--result-json") + 1]
json.dump({{"val_bpb": 1.5, "training_seconds": 1.0, "num_steps": 3, "budget_s": 5.0, "split_sha256": {split!r},
           "evaluator_sha256": {claimed!r}}}, open(path, "w"))
"""


def trained_and_evaluated(tmp_path: Path, claimed: str, run_evaluator: str) -> dict[str, Any]:
    """Train the liar with the real LocalExecutor, then run the evaluate node of a run whose evaluator is
    `run_evaluator`; the node's verdict on the outcome."""
    folder = tmp_path / "e0001"
    folder.mkdir(parents=True)
    (folder / "train.py").write_text(LIAR.format(split=SPLIT, claimed=claimed))
    settings = TrainerSettings(budget_s=5.0, kill_after_s=60.0)
    outcome = LocalExecutor().run(Trial("e0001", folder), settings)
    assert outcome["ok"], outcome
    ctx = SimpleNamespace(ledger=Ledger(tmp_path / "run"), split_sha256=SPLIT, trainer=settings,
                          evaluator_sha256=run_evaluator)  # fmt: skip
    state = {"batch": [{"id": "e0001"}], "outcomes": [outcome], "experiments": []}
    (checked,) = evaluate(state, SimpleNamespace(context=ctx))["outcomes"]  # type: ignore[arg-type]
    return checked


def test_a_result_claiming_the_runs_evaluator_is_refused_when_its_evaluator_file_differs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_evaluator = file_sha256(EVALUATOR_PATH)
    changed = tmp_path / "evaluate.py"  # the evaluator file this training runs with is not the run's
    shutil.copy(EVALUATOR_PATH, changed)
    changed.write_text(changed.read_text() + "\n# changed\n")
    monkeypatch.setattr(launcher, "EVALUATOR_PATH", changed)
    checked = trained_and_evaluated(tmp_path, claimed=run_evaluator, run_evaluator=run_evaluator)
    assert checked["status"] == "crash" and "not produced by the locked evaluator" in checked["error"]


def test_a_result_claiming_a_fake_evaluator_is_checked_against_the_real_one(tmp_path: Path) -> None:
    checked = trained_and_evaluated(tmp_path, claimed="0" * 64, run_evaluator=file_sha256(EVALUATOR_PATH))
    assert checked["status"] == "ok", checked.get("error")


def test_an_outcome_without_the_executors_hash_is_refused(tmp_path: Path) -> None:
    result = {"val_bpb": 1.5, "training_seconds": 1.0, "num_steps": 3, "split_sha256": SPLIT,
              "evaluator_sha256": file_sha256(EVALUATOR_PATH)}  # fmt: skip
    settings = TrainerSettings(budget_s=5.0)
    ctx = SimpleNamespace(ledger=Ledger(tmp_path / "run"), split_sha256=SPLIT, trainer=settings,
                          evaluator_sha256=file_sha256(EVALUATOR_PATH))  # fmt: skip
    state = {"batch": [{"id": "e0001"}], "outcomes": [{"ok": True, "result": result}], "experiments": []}
    (checked,) = evaluate(state, SimpleNamespace(context=ctx))["outcomes"]  # type: ignore[arg-type]
    assert checked["status"] == "crash" and "locked evaluator" in checked["error"]


def test_one_rule_for_a_result_the_parent_accepts() -> None:
    """The overrun allowance and the result check exist once (nodes/evaluate.py with trials/launcher.py's factor),
    not again with another slack in the evaluator that the training process imports."""
    root = Path(__file__).resolve().parents[1]
    found = set()
    for path in root.glob("*/**/*.py"):
        if path.parts[len(root.parts)] in ("tests", "build", "runs", "scripts") or ".venv" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)]
            if isinstance(node, ast.FunctionDef):
                names = [node.name]
            found |= {(str(path.relative_to(root)), n) for n in names if "SLACK" in n or "OVERRUN" in n}
            found |= {(str(path.relative_to(root)), n) for n in names if n in ("verify_result", "check_result")}
    assert found == {("trials/launcher.py", "OVERRUN_FACTOR"), ("nodes/evaluate.py", "check_result")}
