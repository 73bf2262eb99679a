"""The parent's side of a warm trial worker (`python -m gpt.worker`): start it once per executor slot, hand it one
trial at a time, kill a trial that overruns its timeout, and start the worker again if it dies.

A trial forked from the worker is its own process group, with the trainer's environment, memory limit, log and
result file, so what the executor reads back is the same as after a cold `python train.py`; only the start-up
(interpreter, torch and its compiler, the data) is paid once per worker instead of once per trial. Code-mode
trainings, which run LLM-written code, never use it: they start cold inside the OS sandbox.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

READY_TIMEOUT_S = 300.0  # importing torch and its compiler on a loaded 2-core machine
REPLY_TIMEOUT_S = 30.0


class WorkerError(RuntimeError):
    """The worker did not start or stopped answering; the trial it had is lost and the worker is restarted."""


@dataclass(frozen=True)
class TrialRun:
    returncode: int  # negative: the signal that ended the trial
    timed_out: bool
    cpu_seconds: float  # the trial's own CPU time (the worker reaps it, so the parent's rusage does not see it)


class WarmWorker:
    """One `gpt.worker` process for trainings of one corpus and vocabulary."""

    def __init__(
        self,
        corpus: str,
        vocab_size: int | None,
        env: Mapping[str, str],
        cwd: Path,
        spawn: Callable[..., subprocess.Popen[bytes]],
        evaluator_sha256: str | None = None,
    ) -> None:
        self.corpus, self.vocab_size, self.env, self.cwd, self.spawn = corpus, vocab_size, dict(env), cwd, spawn
        # the evaluator file the worker imports when it starts, hashed by the parent: part of the key, so a worker
        # whose evaluator file has changed since is replaced, and what its trials are checked with
        self.evaluator_sha256 = evaluator_sha256
        self.proc: subprocess.Popen[bytes] | None = None
        self.buffer = b""
        self.preload_seconds: float | None = None

    def key(self) -> tuple[str, int | None, tuple[tuple[str, str], ...], str | None]:
        return self.corpus, self.vocab_size, tuple(sorted(self.env.items())), self.evaluator_sha256

    def start(self) -> None:
        command = [sys.executable, "-m", "gpt.worker", "--corpus", self.corpus]
        if self.vocab_size is not None:
            command += ["--vocab-size", str(self.vocab_size)]
        self.proc = self.spawn(
            command, cwd=self.cwd, env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None
        )
        self.buffer = b""
        try:
            ready = self._read(READY_TIMEOUT_S)
        except (TimeoutError, WorkerError) as e:
            self.close()
            raise WorkerError(f"the trial worker did not start: {e or 'no answer in time'}") from e
        if not ready.get("ready"):
            self.close()
            raise WorkerError(f"the trial worker did not start: {ready}")
        self.preload_seconds = ready.get("preload_seconds")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def run(
        self, args: list[str], train_py: Path, log: Path, memory_limit_bytes: int | None, timeout_s: float
    ) -> TrialRun:
        """Run one trial (`train_py` with `args`, output appended to `log`) and wait for it, at most `timeout_s`."""
        if not self.alive():
            self.start()
        assert self.proc is not None and self.proc.stdin is not None
        request = {"train_py": str(train_py), "args": args, "log": str(log), "cwd": str(train_py.parent),
                   "memory_limit_bytes": memory_limit_bytes}  # fmt: skip
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
            pid = int(self._read(REPLY_TIMEOUT_S)["pid"])
        except (OSError, KeyError, ValueError, WorkerError) as e:
            self.close()
            raise WorkerError(f"the trial worker did not take the trial: {e}") from e
        try:
            done = self._read(timeout_s)
            timed_out = False
        except TimeoutError:
            _kill_group(pid)
            done, timed_out = self._read(REPLY_TIMEOUT_S), True
        except BaseException:  # Ctrl-C or an error here: leave no training behind
            _kill_group(pid)
            raise
        return TrialRun(int(done["returncode"]), timed_out, float(done.get("cpu_seconds", 0.0)))

    def _read(self, timeout_s: float) -> dict[str, Any]:
        """The worker's next reply line; TimeoutError when none comes in time, WorkerError when it died."""
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        fd = self.proc.stdout.fileno()
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in self.buffer:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                if not selector.select(left):
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise WorkerError(f"the trial worker exited (code {self.proc.wait()})")
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        try:
            reply = json.loads(line)
        except ValueError as e:
            raise WorkerError(f"the trial worker wrote {line[:200]!r}") from e
        if not isinstance(reply, dict):
            raise WorkerError(f"the trial worker wrote {line[:200]!r}")
        return reply

    def close(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the worker and any trial it still has
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        self.proc = None


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
