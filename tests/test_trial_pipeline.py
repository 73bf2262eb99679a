"""Overlap: each trial of a batch starts as soon as it is proposed, the next proposal is asked while it trains, and
the run proposes exactly the experiments it proposes without overlap."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from support import SyntheticExecutor, change, config

from checkpoints.run_folder import Ledger
from graphs.runner import execute, resolve_overlap
from llm.scripted import ScriptedChatModel
from trials.launcher import TRAIN_PATH, TrainerSettings, Trial
from trials.pipeline import TrialPipeline

LLM_S = 0.4  # each scripted answer takes this long
TRIAL_S = 0.3


class TimedExecutor(SyntheticExecutor):
    """The synthetic executor, recording when each trial started and ended and how many ran at once."""

    def __init__(self, delay_s: float = TRIAL_S) -> None:
        super().__init__(delay_s)
        self.started: dict[str, float] = {}
        self.ended: dict[str, float] = {}
        self.running = 0
        self.most_at_once = 0
        self.lock = threading.Lock()

    def run(self, trial: Trial, settings: TrainerSettings) -> dict[str, Any]:
        with self.lock:
            self.started[trial.experiment_id] = time.time()
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            return super().run(trial, settings)
        finally:
            with self.lock:
                self.running -= 1
                self.ended[trial.experiment_id] = time.time()


SCRIPT = [change("MATRIX_LR", v) for v in (0.2, 0.08, 0.06, 0.1, 0.12, 0.15)]


def run(tmp_path, overlap: str, trial_s: float = TRIAL_S, **overrides: Any) -> tuple[dict, TimedExecutor, Ledger]:
    executor = TimedExecutor(trial_s)
    llm = ScriptedChatModel(script=list(SCRIPT), sleep=LLM_S)
    cfg = config(tmp_path / overlap, iterations=6, batch=3, overlap=overlap, **overrides)
    final = execute(cfg, llm=llm, executor=executor, inner_only=True)
    return final, executor, Ledger(tmp_path / overlap / "run")


def proposed_at(ledger: Ledger) -> dict[str, float]:
    return {e["experiment"]: e["time"] for e in ledger.events("propose")}


def test_overlap_trains_each_proposal_while_the_next_is_asked_and_proposes_the_same_experiments(tmp_path):
    final_off, off, ledger_off = run(tmp_path, "off")
    final_on, on, ledger_on = run(tmp_path, "on")

    def experiments(final: dict) -> list[tuple]:
        return [
            (e["id"], e["params"], e["status"], e["val_bpb"], e.get("proposal_source")) for e in final["experiments"]
        ]

    assert experiments(final_on) == experiments(final_off)  # the same proposals, the same decisions
    assert final_on["best_id"] == final_off["best_id"] and final_on["incumbent"] == final_off["incumbent"]
    # without overlap the batch's first trial starts after its last proposal; with it, before the second is asked
    assert off.started["e0001"] > proposed_at(ledger_off)["e0003"]
    assert on.started["e0001"] < proposed_at(ledger_on)["e0002"]
    assert on.started["e0004"] < proposed_at(ledger_on)["e0005"]
    assert on.most_at_once == 1  # one executor slot: trials still run one at a time
    # every trial is trained once and written before it starts, its events in order
    assert on.runs == [f"e{i:04d}" for i in range(7)]
    for i in range(1, 7):
        kinds = [e["kind"] for e in ledger_on.events() if e.get("experiment") == f"e{i:04d}"]
        assert kinds[:3] == ["propose", "train_start", "train_end"], kinds


def test_overlap_with_two_slots_runs_a_batch_in_parallel_as_it_is_proposed(tmp_path):
    final, executor, ledger = run(tmp_path, "on", trial_s=3 * LLM_S, parallel=2)
    assert executor.most_at_once == 2
    assert [e["status"] for e in final["experiments"]][1:4] == ["discard", "keep", "discard"]


def test_auto_overlaps_only_where_the_llm_does_not_share_the_trainers_cores(tmp_path):
    def cfg(**kw: Any) -> Any:
        return config(tmp_path, **{"batch": 4, **kw})

    assert not resolve_overlap(cfg())  # the embedded model next to a CPU trainer
    assert resolve_overlap(cfg(device="cuda"))
    assert resolve_overlap(cfg(executor="ray"))
    assert resolve_overlap(cfg(base_url="http://llm.example:8000/v1", model="m"))
    assert not resolve_overlap(cfg(base_url="http://llm.example:8000/v1", model="m", batch=1))  # nothing to overlap
    assert not resolve_overlap(cfg(device="cuda", executor="surrogate:ablation/data/surrogate_samples.csv"))
    assert resolve_overlap(cfg(overlap="on")) and not resolve_overlap(cfg(device="cuda", overlap="off"))


def test_the_pipeline_keeps_the_slots_order_and_passes_an_executor_error_on(tmp_path):
    executor = TimedExecutor(delay_s=0.05)
    pipeline = TrialPipeline(executor, slots=1)
    settings = TrainerSettings(budget_s=1.0)

    class Boom(TimedExecutor):
        def run(self, trial: Trial, settings: TrainerSettings) -> dict[str, Any]:
            raise RuntimeError(f"executor lost {trial.experiment_id}")

    # every folder is written before any trial starts: a trial in flight reads its train.py
    first, second = Trial("e0001", _folder(tmp_path, "e0001")), Trial("e0002", _folder(tmp_path, "e0002"))
    try:
        assert not pipeline.started("e0001")
        pipeline.start(first, settings)
        pipeline.start(first, settings)  # twice: still one trial
        assert pipeline.started("e0001")
        outcomes = pipeline.outcomes([second, first], settings)
        assert [o["ok"] for o in outcomes] == [True, True]
        assert executor.runs == ["e0001", "e0002"] and executor.most_at_once == 1
        assert not pipeline.started("e0001")  # handed back: forgotten
    finally:
        pipeline.close()
    broken = TrialPipeline(Boom(), slots=1)
    try:
        with pytest.raises(RuntimeError, match="executor lost e0009"):
            broken.outcomes([Trial("e0009", _folder(tmp_path, "e0009"))], settings)
    finally:
        broken.close()


def _folder(root: Path, experiment_id: str) -> Path:
    """A folder holding the default train.py (the synthetic executor reads its constants)."""
    folder = root / experiment_id
    folder.mkdir(exist_ok=True)
    (folder / "train.py").write_text(TRAIN_PATH.read_text())
    return folder
