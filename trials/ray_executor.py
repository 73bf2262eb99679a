"""Running trials on a Ray cluster: one Ray task per trial, one GPU (or one CPU slot) per task.

How the files travel (no shared filesystem is needed):
- driver -> worker: the candidate train.py is read from the experiment folder and sent as a task argument (a few
  tens of kB, inlined in the task spec); the `TrainerSettings` go with it.
- worker: the task writes train.py into a fresh temporary folder of its node and runs it exactly like
  `LocalExecutor` does, through the same launcher (`trials.launcher.run_training`): same command line, same
  allowlisted environment, same memory limit, the same OS sandbox for a code-mode train.py, same hard timeout on
  the whole process group, same `read_outcome`. A worker without bubblewrap records a code-mode trial as a crash
  that names the package.
- worker -> driver: the task returns the outcome, the text of log.txt and the text of result.json as its return value
  (through Ray's object store); the driver writes log.txt and result.json into the experiment folder.
- the repository's code reaches the workers through the job's `runtime_env={"working_dir": <repository root>}`:
  Ray zips it (honouring .gitignore and `RUNTIME_ENV_EXCLUDES`), uploads it to the cluster once per content hash and
  unpacks it on every node, so `trials.ray_executor` imports there and train.py finds `gpt/` on PYTHONPATH. The Python
  environment (torch, ...) must already be installed on every node.

Faults:
- a worker process (or its node) that dies mid-trial: Ray runs the task again (`max_retries`, default 1); when the
  retry dies too the trial is recorded as a crash with Ray's error. The trial's child process is bound to the worker
  (PR_SET_PDEATHSIG on Linux, see `spawn_tied`), so a killed worker leaves no orphaned training competing with the
  retry.
- the driver dies: Ray kills the job's workers (and with them their trials). Each trial that finished is landed on
  the driver the moment it returns: log.txt, result.json and `executor_outcome.json` (the outcome with the sha256 of
  the train.py and settings it ran with). After `resume` the train node asks again for the trials of the interrupted
  batch that have no outcome.json; the executor answers a trial that already landed with the same train.py and
  settings from its `executor_outcome.json`, and runs only the others.

`run_batch` returns the outcomes in the order of the trials, whatever order they finish in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import ray
from ray.exceptions import RayError, RayTaskError, RuntimeEnvSetupError

from checkpoints.run_folder import write_atomic, write_json_atomic
from trials.launcher import REPO_ROOT, LocalExecutor, TrainerSettings, Trial, prepare_outside, run_training

NAMESPACE = "bilevel-autoresearch"
# Never shipped to the workers (on top of what .gitignore already leaves out).
RUNTIME_ENV_EXCLUDES = [".git", ".venv", "runs", "**/__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"]
LANDED = "executor_outcome.json"  # in the experiment folder: a finished trial, kept across a lost driver


def trial_key(source: str, settings: TrainerSettings) -> str:
    """What a trial ran: its train.py and its settings (a landed outcome is reused only for the same key)."""
    settings_text = json.dumps(dataclasses.asdict(settings), sort_keys=True)
    return hashlib.sha256(f"{source}\0{settings_text}".encode()).hexdigest()


_WARM: LocalExecutor | None = None  # this Ray worker process's warm trial worker, kept from task to task


def run_trial_here(experiment_id: str, source: str, settings: TrainerSettings, warm: bool = False) -> dict[str, Any]:
    """Run one candidate train.py in a temporary folder of this machine; return the outcome and the files' text.

    This is the body of the Ray task: the same launcher as `LocalExecutor.run`; with `warm`, a parameter-mode trial
    is forked from a warm worker that this Ray worker process keeps between tasks, as the local executor does.
    """
    global _WARM
    with tempfile.TemporaryDirectory(prefix=f"{experiment_id}-") as tmp:
        folder = Path(tmp)
        (folder / "train.py").write_text(source)
        if settings.sandbox:  # the sandboxed trainer cannot write this node's data cache: fill it first
            prepare_outside(settings)
        if warm and not settings.sandbox:
            _WARM = _WARM or LocalExecutor(parallel=2, warm=True)  # parallel > 1: tasks share the node, no load share
            outcome = _WARM.run(Trial(experiment_id, folder), settings)
        else:
            outcome = run_training(settings, folder)
        log, result_json = folder / "log.txt", folder / "result.json"
        return {
            "outcome": {**outcome, "host": socket.gethostname()},
            "log": log.read_text(errors="replace") if log.exists() else "",
            "result_json": result_json.read_text() if result_json.exists() else None,
        }


_remote_trial = ray.remote(run_trial_here)


def landed(trial: Trial, key: str) -> dict[str, Any] | None:
    """The outcome this trial already brought back with the same train.py and settings, if any."""
    try:
        record = json.loads((trial.folder / LANDED).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    outcome = record.get("outcome") if isinstance(record, dict) and record.get("key") == key else None
    return outcome if isinstance(outcome, dict) else None


class RayExecutor:
    """Runs each trial as a Ray task on the cluster at `address` ("auto": the one `ray start` started on this
    machine; "ray://host:10001": Ray Client, needs `ray[client]`; "host:6379": the head's GCS).

    Resources per trial: `num_gpus` (default: 1 when the trainer's device is cuda, or auto on a cluster with GPUs;
    else 0) and `num_cpus` (default 1). `parallel` caps how many trials of a batch are in flight at once (default:
    as many as the cluster's free resources admit, which Ray decides). `max_retries`: how many times a trial whose
    worker died is run again before it is recorded as a crash.
    """

    def __init__(
        self,
        address: str | None = "auto",
        *,
        parallel: int | None = None,
        num_gpus: float | None = None,
        num_cpus: float = 1,
        max_retries: int = 1,
        working_dir: Path | None = REPO_ROOT,
        warm: bool = False,
    ) -> None:
        self.address = address
        self.parallel = parallel
        self.num_gpus = num_gpus
        self.num_cpus = num_cpus
        self.max_retries = max_retries
        self.working_dir = working_dir
        self.warm = warm  # parameter-mode trials fork from a warm worker kept by each Ray worker process

    def connect(self) -> None:
        """Join the cluster (once per process). A process that already called `ray.init` keeps its connection: the
        repository must then be importable on the workers by other means (an installed package, or its own
        runtime_env)."""
        if ray.is_initialized():
            return
        runtime_env = (
            {"working_dir": str(self.working_dir), "excludes": RUNTIME_ENV_EXCLUDES} if self.working_dir else None
        )
        try:
            ray.init(
                address=self.address,
                runtime_env=runtime_env,
                namespace=NAMESPACE,
                logging_level=logging.WARNING,
            )
        except ConnectionError as e:
            causes = f"{e} {e.__cause__}"
            hint = (
                "the cluster requires token authentication: export RAY_AUTH_MODE=token and give this process the "
                "cluster's token (~/.ray/auth_token, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH)"
                if "InvalidAuthToken" in causes or "AuthenticationError" in causes
                else "start one with `ray start --head` (see docs/ray.md) or run with --executor local"
            )
            raise RuntimeError(f"cannot join the Ray cluster at --ray-address {self.address!r}: {e}; {hint}") from e

    def gpus_per_trial(self, settings: TrainerSettings) -> float:
        if self.num_gpus is not None:
            return self.num_gpus
        if settings.device == "cuda":
            return 1
        if settings.device == "auto":
            return 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
        return 0

    def run(self, trial: Trial, settings: TrainerSettings) -> dict[str, Any]:
        return self.run_batch([trial], settings)[0]

    def run_batch(self, trials: list[Trial], settings: TrainerSettings) -> list[dict[str, Any]]:
        """Submit the trials (at most `parallel` in flight), land each one's files as it finishes, and return the
        outcomes in the order of `trials`."""
        self.connect()
        options = {
            "num_cpus": self.num_cpus,
            "num_gpus": self.gpus_per_trial(settings),
            "max_retries": self.max_retries,
            "retry_exceptions": False,
        }
        outcomes: list[dict[str, Any] | None] = [None] * len(trials)
        waiting = list(range(len(trials)))
        in_flight: dict[ray.ObjectRef, int] = {}
        submitted: dict[int, float] = {}
        keys: dict[int, str] = {}
        limit = self.parallel if self.parallel and self.parallel > 0 else len(trials)
        try:
            while waiting or in_flight:
                while waiting and len(in_flight) < limit:
                    i = waiting.pop(0)
                    trial = trials[i]
                    source = (trial.folder / "train.py").read_text()
                    keys[i] = trial_key(source, settings)
                    outcomes[i] = landed(trial, keys[i])
                    if outcomes[i] is not None:  # finished before the driver was lost: not run again
                        continue
                    (trial.folder / "result.json").unlink(missing_ok=True)  # never read a stale result as this one's
                    ref = _remote_trial.options(name=f"trial-{trial.experiment_id}", **options).remote(
                        trial.experiment_id, source, settings, self.warm
                    )
                    in_flight[ref], submitted[i] = i, time.monotonic()
                if not in_flight:
                    continue
                done, _ = ray.wait(list(in_flight), num_returns=1)
                for ref in done:
                    i = in_flight.pop(ref)
                    outcomes[i] = self._land(trials[i], ref, time.monotonic() - submitted[i])
                    write_json_atomic(trials[i].folder / LANDED, {"key": keys[i], "outcome": outcomes[i]})
        except BaseException:
            for ref in in_flight:  # interrupted: stop the trials still running rather than leave them to the cluster
                ray.cancel(ref, force=True)
            raise
        assert all(outcome is not None for outcome in outcomes)
        return cast(list[dict[str, Any]], outcomes)

    def _land(self, trial: Trial, ref: ray.ObjectRef, seconds: float) -> dict[str, Any]:
        """The finished trial's outcome; its log and result written into the experiment folder."""
        try:
            reply = ray.get(ref)
        except RuntimeEnvSetupError as e:
            raise RuntimeError(f"Ray could not set up the workers' environment (the repository's code): {e}") from e
        except RayTaskError as e:  # the task's own code raised (not retried: it would raise again)
            return self._crash(trial, f"ray task failed: {type(e.cause).__name__}: {e.cause}", str(e), seconds)
        except RayError as e:  # the worker or its node died, every attempt: a crash of this trial
            first_line = (str(e).splitlines() or [""])[0]
            error = f"ray worker lost (the trial ran {1 + self.max_retries} time(s)): {type(e).__name__}: {first_line}"
            return self._crash(trial, error, str(e), seconds)
        write_atomic(trial.folder / "log.txt", reply["log"])
        if reply["result_json"] is not None:
            write_atomic(trial.folder / "result.json", reply["result_json"])
        outcome: dict[str, Any] = reply["outcome"]
        return outcome

    @staticmethod
    def _crash(trial: Trial, error: str, detail: str, seconds: float) -> dict[str, Any]:
        write_atomic(trial.folder / "log.txt", f"{error}\n\n{detail}\n")
        return {
            "ok": False,
            "returncode": None,
            "wall_seconds": round(seconds, 3),
            "error": error,
            "log_tail": detail[-2000:],
        }
