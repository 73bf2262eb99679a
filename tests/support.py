"""Shared test helpers: a synthetic executor (no training), scripted proposals, a run config in tmp_path."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from graphs.run_config import RunConfig
from trials.launcher import EVALUATOR_PATH, TrainerSettings, Trial, file_sha256

SPLIT = "f" * 64


def synthetic_bpb(params: dict[str, Any]) -> float:
    """A smooth landscape with its optimum away from the defaults (MATRIX_LR 0.08, WARMDOWN_FRAC 0.7)."""
    return round(
        1.9
        + 0.3 * math.log(params["MATRIX_LR"] / 0.08) ** 2
        + 0.2 * (params["WARMDOWN_FRAC"] - 0.7) ** 2
        + 0.01 * abs(params["DEPTH"] - 4),
        6,
    )


class SyntheticExecutor:
    """Stands in for the trainer: val_bpb from `synthetic_bpb`; WEIGHT_DECAY > 0.4 crashes (exit 3, diverged)."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.runs: list[str] = []

    def run_batch(self, trials: list[Trial], settings: TrainerSettings) -> list[dict[str, Any]]:
        return [self.run(t, settings) for t in trials]

    def run(self, trial: Trial, settings: TrainerSettings) -> dict[str, Any]:
        self.runs.append(trial.experiment_id)
        params = _constants(trial.folder / "train.py")
        time.sleep(self.delay_s)
        if params["WEIGHT_DECAY"] > 0.4:
            return {
                "ok": False,
                "returncode": 3,
                "error": "exit 3: diverged (NaN or exploding loss)",
                "wall_seconds": 0.01,
                "log_tail": "loss nan",
            }
        result = {
            "val_bpb": synthetic_bpb(params),
            "training_seconds": min(1.0, settings.budget_s),
            "split_sha256": SPLIT,
            "peak_memory_mb": 512.0,
            "num_steps": 10,
        }
        # the executor hashes the evaluator a training runs with, as the real ones do
        return {"ok": True, "returncode": 0, "wall_seconds": 0.01, "result": result,
                "evaluator_sha256": file_sha256(EVALUATOR_PATH)}  # fmt: skip


def _constants(train_py: Path) -> dict[str, Any]:
    from mechanisms.space import SearchSpace

    return SearchSpace.from_train_source(train_py.read_text()).defaults()


def change(name: str, value: Any, hypothesis: str = "test") -> dict[str, Any]:
    """One scripted proposal answer (the tool-call arguments of the proposal schema)."""
    return {"changes": [{"name": name, "value": str(value)}], "hypothesis": hypothesis, "expected_direction": "lower"}


def config(tmp_path: Path, **overrides: Any) -> RunConfig:
    values: dict[str, Any] = {"run_dir": str(tmp_path / "run"), "iterations": 4, "budget_s": 1.0, "segment": 5}
    values.update(overrides)
    return RunConfig(**values)
