"""Running one candidate train.py as a subprocess with a wall-clock budget and a hard kill timeout.

The executor is what the `train` node hands a trial to. `LocalExecutor` runs it on this machine; another executor
(Ray) only has to implement `run(trial) -> dict` with the same result shape.

Every training child gets an environment built from an allowlist (`mechanisms.jail.PASSED_ENV`: locale,
accelerators, thread counts, the project's cache; never an API key, whatever its name), the same optional
address-space limit, its own process group (a timeout, an error or Ctrl-C in the parent kills the whole group) and,
on Linux, death with the parent even after a kill -9. A code-mode train.py is LLM-written code: it runs inside the
OS sandbox (`TrainerSettings.sandbox`; `mechanisms/jail.py`), which sees the system, Python, `gpt/` and the prepared
data read-only, and can write only its own experiment folder, a private /tmp and the sandboxed trainings' compiler
cache. `start_training` is the one launcher both executors (local and Ray) use.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import resource
import signal
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from gpt.prepare import cache_root
from llm.local_server import spawn_tied
from mechanisms import jail
from trials.machine_load import other_share, snapshot
from trials.warm_worker import WarmWorker, WorkerError

REPO_ROOT = Path(__file__).resolve().parent.parent
TRAIN_PATH = REPO_ROOT / "gpt" / "train.py"
EVALUATOR_PATH = REPO_ROOT / "gpt" / "evaluate.py"
OVERRUN_FACTOR = 1.10  # a training's seconds beyond budget x this (+ 1 s, + the last step's) mean a tampered clock
EXIT_MEANINGS = {2: "invalid configuration", 3: "diverged (NaN or exploding loss)"}
OOM_MARKERS = ("MemoryError", "can't allocate memory", "out of memory", "OutOfMemoryError")
MAX_RESULT_BYTES = 1 << 20  # a result file larger than this is not a trainer's summary
LOG_TAIL_BYTES = 64 << 10


@dataclass(frozen=True)
class TrainerSettings:
    """How every experiment of a run is trained; the same for every group of an ablation. Its defaults are the one
    declaration of the training settings: a run's (graphs/run_config.py RunConfig) and the command lines' derive from
    them."""

    budget_s: float = 20.0
    device: str = "cpu"
    corpus: str = "shakespeare"
    vocab_size: int | None = None
    eval_tokens: int | None = None
    seed: int = 0
    kill_after_s: float | None = None  # hard timeout; default: 2 x budget + 300 s for start-up and evaluation
    extra_env: dict[str, str] = field(default_factory=dict)  # passed as given, secrets included
    # RLIMIT_AS of the training process (None: no limit). CPU runs only: CUDA reserves far more address space than
    # it uses, so on a GPU bound memory with the device's own limits instead.
    memory_limit_bytes: int | None = None
    sandbox: bool = False  # run train.py inside the OS sandbox (code mode: the file is LLM-written)

    @property
    def timeout_s(self) -> float:
        return self.kill_after_s if self.kill_after_s is not None else 2 * self.budget_s + 300

    def limits(self) -> Callable[[], None] | None:
        """What the child applies to itself before exec (None when there is nothing to apply)."""
        limit = self.memory_limit_bytes
        if limit is None:
            return None
        return lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

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


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_in_threads(
    executor: Executor, trials: list[Trial], settings: TrainerSettings, parallel: int
) -> list[dict[str, Any]]:
    """Run `trials` with at most `parallel` at a time (each trial is a child process: threads only wait)."""
    if len(trials) <= 1 or parallel <= 1:
        return [executor.run(t, settings) for t in trials]
    with ThreadPoolExecutor(max_workers=min(parallel, len(trials))) as pool:
        return list(pool.map(lambda t: executor.run(t, settings), trials))


def log_tail(path: Path, lines: int = 30) -> str:
    """The last `lines` lines of a log, reading at most its last LOG_TAIL_BYTES (a log can be huge)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "".join(text.splitlines(True)[-lines:])


def trainer_env(extra: Mapping[str, str], base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a training outside the sandbox: the allowlisted variables of `base` (default: this
    process's; `mechanisms.jail.PASSED_ENV`, plus PATH, HOME and the like), then `extra`, then the repository path."""
    return {**jail.passed_env(base, host=True), **extra, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}


def compile_cache() -> Path:
    """torch.compile's cache for sandboxed trainings only: kept across trainings (a cold compile costs seconds each
    time) and written by no trusted process (a candidate can leave a poisoned kernel there for another candidate
    only, never for a parameter-mode training)."""
    return cache_root() / "sandbox-compile"


def sandboxed_env(settings: TrainerSettings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    cache = compile_cache()
    own = {
        "PYTHONPATH": str(REPO_ROOT),
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "BILEVEL_CACHE": str(cache_root()),
        "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
        "TRITON_CACHE_DIR": str(cache / "triton"),
    }
    return jail.sandbox_env({**own, **settings.extra_env}, base)


def corpus_paths(settings: TrainerSettings) -> tuple[str, ...]:
    """A corpus given as a path (`--corpus /data/x`), which the trainer reads to find its cached tokens."""
    path = Path(settings.corpus)
    return (str(path.resolve()),) if path.exists() else ()


def prepare_outside(settings: TrainerSettings) -> None:
    """Build the corpus's cached tokens with the project's own code before a sandboxed training, which can only read
    them (a Ray node prepares its own cache at its first trial). A failure is left for the training to report."""
    command = [sys.executable, "-m", "gpt.prepare", "--corpus", settings.corpus]
    if settings.vocab_size is not None:
        command += ["--vocab-size", str(settings.vocab_size)]
    env = trainer_env(settings.extra_env)
    subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, timeout=settings.timeout_s, check=False)


def training_jail(settings: TrainerSettings, folder: Path) -> tuple[jail.Jail, jail.Rlimits]:
    """What a sandboxed training sees: the system, Python, `gpt/` and the prepared data read-only; its experiment
    folder, the compile cache and a private /tmp writable; the accelerators when it trains on one."""
    cache = compile_cache()
    cache.mkdir(parents=True, exist_ok=True)
    devices = () if settings.device == "cpu" else tuple(sorted(str(p) for p in Path("/dev").glob("nvidia*")))
    box = jail.Jail(
        # the prepared data and the machine's profile (gpt/machine.py): read, never written, by a candidate
        read_only=(str(REPO_ROOT / "gpt"), str(cache_root() / "data"), str(cache_root() / "machine-profiles.json"))
        + corpus_paths(settings),
        writable=(str(folder), str(cache)),
        env=sandboxed_env(settings),
        cwd=str(folder),
        tmp_bytes=1 << 30,
        devices=devices,
        processes=True,  # torch.compile starts compiler workers
    )
    cpu = int(settings.timeout_s * (os.cpu_count() or 1)) + 60
    limits = jail.Rlimits(cpu, settings.memory_limit_bytes, 1 << 30, 4096, 4096)
    return box, limits


def start_training(settings: TrainerSettings, folder: Path, result_json: Path, log: Any) -> jail.Jailed:
    """Start `folder/train.py` (its output to `log`) as the local and the Ray executor both do: in its own session,
    tied to this process, with the allowlisted environment and the memory limit; inside the OS sandbox when
    `settings.sandbox`. Raises `jail.SandboxUnavailable` when that sandbox cannot start."""
    command = settings.command(folder / "train.py", result_json)
    if settings.sandbox and not jail.unsafe():
        reason = jail.unavailable()
        if reason is not None:
            raise jail.SandboxUnavailable(f"a code-mode training runs only inside the OS sandbox: {reason}")
        box, limits = training_jail(settings, folder)
        return jail.spawn(command, box, limits, spawner=spawn_tied, stdout=log, stderr=subprocess.STDOUT)
    env = trainer_env(settings.extra_env)
    proc = spawn_tied(command, preexec=settings.limits(), cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
    return jail.Jailed(proc, None)


def run_training(settings: TrainerSettings, folder: Path) -> dict[str, Any]:
    """Train `folder/train.py` into `folder/result.json` and `folder/log.txt`; the outcome (see `read_outcome`).
    A timeout, an error or Ctrl-C here kills the whole training (every process of its sandbox)."""
    result_json, log = folder / "result.json", folder / "log.txt"
    result_json.unlink(missing_ok=True)  # a stale result of a killed attempt must not be read as this one's
    evaluator = file_sha256(EVALUATOR_PATH)  # the file this training imports, hashed here: never taken from its report
    start = time.monotonic()
    with open(log, "w", encoding="utf-8") as out:
        try:
            child = start_training(settings, folder, result_json, out)
        except jail.SandboxUnavailable as e:
            out.write(f"{e}\n")
            return {"ok": False, "returncode": None, "wall_seconds": 0.0, "error": str(e), "log_tail": str(e)}
        try:
            code = child.popen.wait(timeout=settings.timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            child.kill()
            code, timed_out = child.popen.returncode, True
        except BaseException:  # Ctrl-C or an error in this process: leave no training process behind
            child.kill()
            raise
    outcome = read_outcome(result_json, log, code, timed_out, time.monotonic() - start, settings.timeout_s)
    return {**outcome, "evaluator_sha256": evaluator}


def run_warm(settings: TrainerSettings, folder: Path, worker: WarmWorker) -> tuple[dict[str, Any], float]:
    """Like `run_training`, the trial forked from a warm worker; also the trial's own CPU seconds (the worker reaps
    it, so this process's rusage does not count them). Falls back to a cold start when the worker fails, and when
    the forked trial ran past its timeout: the worker is then closed (the next trial forks from a fresh one) and the
    trial trains again cold, in a fresh process, so that only a cold training's timeout counts as the configuration's
    crash — a hang of the forked process's state must not (`gpt.worker.compile_in_process`). The forked attempt's
    log is kept as log.forked.txt."""
    result_json, log = folder / "result.json", folder / "log.txt"
    result_json.unlink(missing_ok=True)
    log.write_text("")
    start = time.monotonic()
    command = settings.command(folder / "train.py", result_json)
    try:
        run = worker.run(command[2:], folder / "train.py", log, settings.memory_limit_bytes, settings.timeout_s)
    except WorkerError as e:
        outcome = run_training(settings, folder)
        return {**outcome, "warm_worker": f"failed, trained cold: {e}"}, 0.0
    if run.timed_out:
        worker.close()
        if log.exists():
            os.replace(log, folder / "log.forked.txt")
        outcome = run_training(settings, folder)
        return {**outcome, "warm_worker": f"timed out after {settings.timeout_s:g} s forked, trained cold"}, 0.0
    outcome = read_outcome(result_json, log, run.returncode, run.timed_out, time.monotonic() - start,
                           settings.timeout_s)  # fmt: skip
    return {**outcome, "warm_worker": "used", "evaluator_sha256": worker.evaluator_sha256}, run.cpu_seconds


class LocalExecutor:
    """Runs a trial in a child process group on this machine; a timeout, an error or Ctrl-C kills the whole group
    (see `spawn_tied`: the kernel kills it too when this process dies). A batch runs
    `parallel` trials at a time (default 1: on a small CPU, parallel trials only slow each other down). A trial run
    on its own records `other_cpu_share`, the share of the machine's CPU that went to anything else meanwhile.

    With `warm=True` each slot keeps a warm trial worker (`trials/warm_worker.py`): torch, its compiler and the data
    are loaded once, and every parameter-mode trial is forked from it into its own process group. Code-mode trials
    (LLM-written train.py) always start cold, inside the OS sandbox."""

    def __init__(self, parallel: int = 1, warm: bool = False) -> None:
        self.parallel = parallel
        self.warm = warm
        self.idle: queue.SimpleQueue[WarmWorker] = queue.SimpleQueue()
        self.workers: list[WarmWorker] = []
        weakref.finalize(self, _close_all, self.workers)

    def run_batch(self, trials: list[Trial], settings: TrainerSettings) -> list[dict[str, Any]]:
        return run_in_threads(self, trials, settings, self.parallel)

    def run(self, trial: Trial, settings: TrainerSettings) -> dict[str, Any]:
        folder = trial.folder.resolve()  # the child runs in the folder: its paths must not be relative
        worker = self.worker_for(settings) if self.warm and not settings.sandbox else None
        before = snapshot() if self.parallel == 1 else None  # after the worker's start-up: not the trial's machine
        trial_cpu = 0.0
        if worker is not None:
            try:
                outcome, trial_cpu = run_warm(settings, folder, worker)
            finally:
                self.idle.put(worker)
        else:
            outcome = run_training(settings, folder)
        share = other_share(before, snapshot(), own_extra_s=trial_cpu) if before is not None else None
        return outcome if share is None else {**outcome, "other_cpu_share": share}

    def worker_for(self, settings: TrainerSettings) -> WarmWorker:
        """A free worker for trainings like `settings` (same corpus, vocabulary and environment)."""
        wanted = WarmWorker(settings.corpus, settings.vocab_size, trainer_env(settings.extra_env), REPO_ROOT,
                            spawn_tied, file_sha256(EVALUATOR_PATH))  # fmt: skip
        while True:
            try:
                worker = self.idle.get_nowait()
            except queue.Empty:
                break
            if worker.key() == wanted.key():
                return worker
            worker.close()  # other settings: its data and environment are not this trial's
            self.workers.remove(worker)
        self.workers.append(wanted)
        try:
            wanted.start()
        except WorkerError:  # the trial then starts cold (run_warm falls back) and the next one tries again
            pass
        return wanted

    def close(self) -> None:
        _close_all(self.workers)


def _close_all(workers: list[WarmWorker]) -> None:
    for worker in workers:
        worker.close()


def read_outcome(
    result_json: Path, log: Path, code: int, timed_out: bool, seconds: float, timeout_s: float
) -> dict[str, Any]:
    """The trainer's result, or a crash with the reason and the log's tail."""
    outcome: dict[str, Any] = {"returncode": code, "wall_seconds": round(seconds, 3)}
    tail = log_tail(log)
    if timed_out:
        return {**outcome, "ok": False, "error": f"killed after the {timeout_s:.0f} s timeout", "log_tail": tail}
    if code != 0:
        meaning = EXIT_MEANINGS.get(code, "crashed")
        if code < 0:
            meaning = f"killed by signal {_signal_name(-code)}"
        if code == 1 and any(marker in tail for marker in OOM_MARKERS):
            meaning = "out of memory"
        return {**outcome, "ok": False, "error": f"exit {code}: {meaning}", "log_tail": tail}
    try:
        size = result_json.stat().st_size
        if size > MAX_RESULT_BYTES:
            raise ValueError(f"{size} bytes, more than {MAX_RESULT_BYTES}")
        result = json.loads(result_json.read_text())
        if not isinstance(result, dict):
            raise ValueError(f"a JSON {type(result).__name__}, not an object")
    except (OSError, ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        return {**outcome, "ok": False, "error": f"result file missing or unreadable: {e}", "log_tail": tail}
    return {**outcome, "ok": True, "result": result}


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)
