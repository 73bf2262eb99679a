"""Trials that start the moment they are proposed: the next proposal of a batch is asked while the batch's first
trials train.

The proposals of a batch never see each other's results (each call sees the ones before it as `running`
experiments), so starting a trial as soon as it is proposed changes when it trains, never which experiments are
proposed for a seed. It pays where the LLM does not share the trainer's cores — a remote endpoint, a GPU trainer,
trials on a Ray cluster: with a batch of k, the time of k - 1 proposals leaves every batch's wall time. Next to the
embedded model on a CPU trainer it would make the fixed budget measure the model's load, so a run turns it on only
where the two do not compete (`graphs/run_config.py`).

The pipeline holds as many trials in flight as the executor's slots; a trial that was never started early (a
resumed run) is run when its outcome is asked for.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from trials.launcher import Executor, TrainerSettings, Trial

UNBOUNDED_SLOTS = 64  # an executor without a limit of its own (a Ray cluster decides): threads only wait


class TrialPipeline:
    """Start trials early on `executor`, at most `slots` at a time, and hand their outcomes back in any order."""

    def __init__(self, executor: Executor, slots: int | None = None) -> None:
        self.executor = executor
        self.slots = slots if slots and slots > 0 else UNBOUNDED_SLOTS
        self._pool = ThreadPoolExecutor(max_workers=self.slots, thread_name_prefix="trial")
        self._futures: dict[str, Future[dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def start(self, trial: Trial, settings: TrainerSettings) -> None:
        """Queue `trial` now (it starts when a slot is free); starting one already in flight does nothing."""
        with self._lock:
            if trial.experiment_id not in self._futures:
                self._futures[trial.experiment_id] = self._pool.submit(self.executor.run, trial, settings)

    def started(self, experiment_id: str) -> bool:
        with self._lock:
            return experiment_id in self._futures

    def outcomes(self, trials: list[Trial], settings: TrainerSettings) -> list[dict[str, Any]]:
        """The outcome of every trial, in the order given: those not started yet are started now (after the ones
        already queued), then all are waited for. An executor's exception propagates, as from `run_batch`."""
        for trial in trials:
            self.start(trial, settings)
        with self._lock:
            futures = [self._futures[t.experiment_id] for t in trials]
        try:
            return [f.result() for f in futures]
        finally:
            with self._lock:
                for trial in trials:
                    self._futures.pop(trial.experiment_id, None)

    def close(self) -> None:
        """Stop taking trials; those in flight finish (their processes are tied to this one's life)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
