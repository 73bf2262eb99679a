"""Running one candidate train.py as a subprocess with a wall-clock budget and a hard kill timeout.

The executor is what the `train` node hands a trial to. `LocalExecutor` runs it on this machine; another executor
(Ray) only has to implement `run(trial) -> dict` with the same result shape.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

REPO_ROOT = Path(__file__).resolve().parent.parent
EXIT_MEANINGS = {2: "invalid configuration", 3: "diverged (NaN or exploding loss)"}


@dataclass(frozen=True)
class TrainerSettings:
    """How every experiment of a run is trained; the same for every group of an ablation."""

    budget_s: float = 60.0
    device: str = "cpu"
    corpus: str = "shakespeare"
    vocab_size: int | None = None
    eval_tokens: int | None = None
    seed: int = 0
    kill_after_s: float | None = None  # hard timeout; default: 2 x budget + 120 s for start-up and evaluation
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def timeout_s(self) -> float:
        return self.kill_after_s if self.kill_after_s is not None else 2 * self.budget_s + 120

    def command(self, train_py: Path, result_json: Path) -> list[str]:
        cmd = [
            sys.executable,
            str(train_py),
            "--budget-s",
            str(self.budget_s),
            "--result-json",
            str(result_json),
            "--seed",
            str(self.seed),
            "--device",
            self.device,
            "--corpus",
            self.corpus,
        ]
        if self.vocab_size is not None:
            cmd += ["--vocab-size", str(self.vocab_size)]
        if self.eval_tokens is not None:
            cmd += ["--eval-tokens", str(self.eval_tokens)]
        return cmd


@dataclass(frozen=True)
class Trial:
    experiment_id: str
    folder: Path  # holds train.py; receives log.txt and result.json


class Executor(Protocol):
    """Runs trials. `run_batch` returns the outcomes in the order of `trials`, whatever order they finish in."""

    def run(self, trial: Trial, settings: TrainerSettings) -> dict[str, Any]: ...

    def run_batch(self, trials: list[Trial], settings: TrainerSettings) -> list[dict[str, Any]]: ...


def run_in_threads(
    executor: Executor, trials: list[Trial], settings: TrainerSettings, parallel: int
) -> list[dict[str, Any]]:
    """Run `trials` with at most `parallel` at a time (each trial is a child process: threads only wait)."""
    if len(trials) <= 1 or parallel <= 1:
        return [executor.run(t, settings) for t in trials]
    with ThreadPoolExecutor(max_workers=min(parallel, len(trials))) as pool:
        return list(pool.map(lambda t: executor.run(t, settings), trials))


def log_tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return ""
    return "".join(path.read_text(errors="replace").splitlines(True)[-lines:])


class LocalExecutor:
    """Runs a trial in a child process group on this machine; a timeout kills the whole group. A batch runs
    `parallel` trials at a time (default 1: on a small CPU, parallel trials only slow each other down)."""

    def __init__(self, parallel: int = 1) -> None:
        self.parallel = parallel

    def run_batch(self, trials: list[Trial], settings: TrainerSettings) -> list[dict[str, Any]]:
        return run_in_threads(self, trials, settings, self.parallel)

    def run(self, trial: Trial, settings: TrainerSettings) -> dict[str, Any]:
        train_py, result_json, log = trial.folder / "train.py", trial.folder / "result.json", trial.folder / "log.txt"
        result_json.unlink(missing_ok=True)  # a stale result of a killed attempt must not be read as this one's
        env = {**os.environ, **settings.extra_env, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}
        start = time.monotonic()
        with open(log, "w", encoding="utf-8") as out:
            proc = subprocess.Popen(
                settings.command(train_py, result_json),
                cwd=trial.folder,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                code = proc.wait(timeout=settings.timeout_s)
                timed_out = False
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                code, timed_out = proc.wait(), True
        return read_outcome(result_json, log, code, timed_out, time.monotonic() - start, settings.timeout_s)


def read_outcome(
    result_json: Path, log: Path, code: int, timed_out: bool, seconds: float, timeout_s: float
) -> dict[str, Any]:
    """The trainer's result, or a crash with the reason and the log's tail."""
    outcome: dict[str, Any] = {"returncode": code, "wall_seconds": round(seconds, 3)}
    if timed_out:
        return {
            **outcome,
            "ok": False,
            "error": f"killed after the {timeout_s:.0f} s timeout",
            "log_tail": log_tail(log),
        }
    if code != 0:
        meaning = EXIT_MEANINGS.get(code, "crashed")
        if code < 0:
            meaning = f"killed by signal {signal.Signals(-code).name}"
        return {**outcome, "ok": False, "error": f"exit {code}: {meaning}", "log_tail": log_tail(log)}
    try:
        result = json.loads(result_json.read_text())
    except (OSError, json.JSONDecodeError) as e:
        return {**outcome, "ok": False, "error": f"result file missing or unreadable: {e}", "log_tail": log_tail(log)}
    return {**outcome, "ok": True, "result": result}
