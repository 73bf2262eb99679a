"""Run a mechanism's source in a child process, never in the parent.

The child (``mechanisms/_child.py``) starts with no inherited environment (no API keys), a fresh scratch directory as
cwd, CPU / address-space / file-size / open-file / process limits, a new session (the whole group is killed on
timeout), a private network namespace when ``unshare`` is permitted, and an audit hook (see ``_child.py``). The
mechanism's ``view.ask_llm`` calls come back to the parent as request lines and are answered with the real
``ask_llm``; their time does not count against the wall-clock limit. The protocol is documented in ``_child.py``.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from mechanisms.base import MechanismSpec
from mechanisms.policy import check_source

CHILD = Path(__file__).with_name("_child.py")
CLONE_NEWNET = 0x40000000
CHILD_ENV = {
    "PYTHONHASHSEED": "0",
    "PYTHONDONTWRITEBYTECODE": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "LC_ALL": "C.UTF-8",
}
_LIBC = ctypes.CDLL(None, use_errno=True)
MAX_REQUEST_CHARS = 2_000  # guidance (truncated) and constraints (refused beyond) of one ask_llm request

ManyAsk = Callable[[int, str, "dict[str, Any] | None"], dict[str, Any]]


class SandboxError(RuntimeError):
    """A mechanism that could not run to a valid result; ``kind`` says why.

    Kinds: policy, timeout, memory, cpu, file_size, crash, load, entry, refused, llm, llm_calls, bad_output.
    """

    def __init__(self, kind: str, message: str, stderr: str = "") -> None:
        super().__init__(f"{kind}: {message}" + (f"\n--- stderr tail ---\n{stderr}" if stderr else ""))
        self.kind = kind
        self.message = message
        self.stderr = stderr


@dataclass(frozen=True)
class SandboxLimits:
    wall_s: float = 10.0  # per view (from the moment the module is loaded), not counting the parent's ask_llm time
    startup_s: float = 15.0  # interpreter start, imports and the module's own top level, once per child
    cpu_s: int = 10  # per view
    memory_bytes: int = 1 << 30
    file_size_bytes: int = 1 << 16
    open_files: int = 32
    max_output_bytes: int = 1 << 20
    max_llm_calls: int = 16  # per view
    network_namespace: bool = True


@dataclass(frozen=True)
class RunStats:
    seconds: float  # wall time of the child, without the parent's ask_llm time
    view_seconds: list[float]  # the entry's own time per view, measured in the child
    llm_calls: list[int]  # ask_llm requests per view
    refused: list[str] = field(default_factory=list)  # audit-hook refusals the mechanism caught and survived


def _preexec(limits: SandboxLimits, views: int) -> Callable[[], None]:
    cpu = int(limits.cpu_s * max(1, views) + limits.startup_s)

    def setup() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_size_bytes, limits.file_size_bytes))
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        unshare = getattr(_LIBC, "unshare", None)  # Linux only
        if limits.network_namespace and unshare is not None:
            unshare(CLONE_NEWNET)  # needs CAP_SYS_ADMIN; without it the audit hook still refuses sockets
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))  # not enforced for root; the audit hook refuses forks

    return setup


def _kill(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _exit_reason(code: int) -> str:
    by_signal = {-signal.SIGXCPU: "cpu", -signal.SIGXFSZ: "file_size", -signal.SIGKILL: "memory"}
    return by_signal.get(code, "crash")


class SandboxedMechanism:
    """A mechanism spec that runs in a child process per call.

    ``mech(view_payload, ask_llm)`` returns the entry's output for one view; ``run_many`` runs several views in one
    child (validation uses it). ``last_stats`` holds the counts of the latest run. With ``enforce_policy`` (the
    default) the constructor refuses source that fails the static policy.
    """

    def __init__(self, spec: MechanismSpec, limits: SandboxLimits | None = None, *, enforce_policy: bool = True):
        if enforce_policy:
            report = check_source(spec.source)
            if not report.ok:
                raise SandboxError("policy", "; ".join(report.messages()))
        self.spec = spec
        self.limits = limits or SandboxLimits()
        self.last_stats: RunStats | None = None

    def __call__(
        self, view_payload: Mapping[str, Any], ask_llm: Callable[[str, dict[str, Any] | None], dict[str, Any]]
    ) -> dict[str, Any]:
        return self.run_many([view_payload], lambda _index, guidance, constraints: ask_llm(guidance, constraints))[0]

    def run_many(self, payloads: Sequence[Mapping[str, Any]], ask_llm: ManyAsk) -> list[dict[str, Any]]:
        """Outputs of the entry for each payload (``params`` set from the spec), in order."""
        views = [{**payload, "params": self.spec.params} for payload in payloads]
        request = json.dumps({"op": "run", "source": self.spec.source, "views": views}, allow_nan=False) + "\n"
        scratch = tempfile.mkdtemp(prefix="mechanism-")
        try:
            return self._run(request, len(views), scratch, ask_llm)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _run(self, request: str, n: int, scratch: str, ask_llm: ManyAsk) -> list[dict[str, Any]]:
        limits = self.limits
        proc = subprocess.Popen(
            [sys.executable, "-s", "-P", str(CHILD)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=scratch,
            env={**CHILD_ENV, "TMPDIR": scratch},
            close_fds=True,
            start_new_session=True,
            preexec_fn=_preexec(limits, n),
        )
        assert proc.stdin and proc.stdout and proc.stderr
        session = _Session(proc, limits, n, ask_llm)
        try:
            proc.stdin.write(request.encode())
            proc.stdin.flush()
        except BrokenPipeError:
            pass
        try:
            message = session.serve()
        finally:
            _kill(proc)
        if message is None:
            code = proc.returncode
            raise SandboxError(_exit_reason(code), f"the child exited ({code}) without a result", session.stderr())
        if message.get("op") == "error":
            view = message.get("view")
            where = f" (view {view})" if view is not None else ""
            refused = f"; refused: {', '.join(message.get('refused', []))}" if message.get("refused") else ""
            raise SandboxError(
                str(message.get("kind", "crash")),
                f"{message.get('message')}{where}{refused}",
                str(message.get("traceback", "")),
            )
        outputs = message.get("outputs")
        if message.get("op") != "result" or not isinstance(outputs, list) or len(outputs) != n:
            raise SandboxError("bad_output", f"malformed final message: {str(message)[:200]}")
        bad = [i for i, out in enumerate(outputs) if not isinstance(out, dict)]
        if bad:
            raise SandboxError("bad_output", f"view {bad[0]}: the entry returned {type(outputs[bad[0]]).__name__}")
        self.last_stats = RunStats(
            session.elapsed(), list(message.get("seconds", [])), session.calls, list(message.get("refused", []))
        )
        return outputs

    def with_limits(self, **changes: Any) -> SandboxedMechanism:
        return SandboxedMechanism(self.spec, replace(self.limits, **changes), enforce_policy=False)


class _Session:
    """The parent's side of one child: reads messages, answers ask_llm, enforces time and output limits."""

    def __init__(self, proc: subprocess.Popen[bytes], limits: SandboxLimits, n: int, ask_llm: ManyAsk) -> None:
        self.proc, self.limits, self.ask_llm = proc, limits, ask_llm
        self.calls = [0] * n
        self.start = time.monotonic()
        self.llm_time = 0.0
        self.deadline = self.start + limits.startup_s + limits.wall_s * max(1, n)
        self.buffer = b""
        self.err = b""
        self.loaded = False

    def elapsed(self) -> float:
        return time.monotonic() - self.start - self.llm_time

    def stderr(self) -> str:
        return self.err.decode("utf-8", "replace")[-4000:]

    def serve(self) -> dict[str, Any] | None:
        assert self.proc.stdout and self.proc.stderr
        selector = selectors.DefaultSelector()
        selector.register(self.proc.stdout, selectors.EVENT_READ)
        selector.register(self.proc.stderr, selectors.EVENT_READ)
        while selector.get_map():
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                limit = f"{self.limits.wall_s:g} s per view ({len(self.calls)} views)"
                start = "once loaded" if self.loaded else f"after {self.limits.startup_s:g} s of start-up"
                raise SandboxError("timeout", f"no result within {limit} {start}", self.stderr())
            for key, _ in selector.select(remaining):
                stream: IO[bytes] = key.fileobj  # type: ignore[assignment]
                data = os.read(stream.fileno(), 65536)
                if not data:
                    selector.unregister(stream)
                elif stream is self.proc.stderr:
                    self.err = (self.err + data)[-16384:]
                else:
                    self.buffer += data
                    message = self._lines()
                    if message is not None:
                        return message
        return None

    def _lines(self) -> dict[str, Any] | None:
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            if len(line) > self.limits.max_output_bytes:
                raise SandboxError("bad_output", f"output larger than {self.limits.max_output_bytes} bytes")
            try:
                message = json.loads(line)
            except ValueError as exc:
                raise SandboxError("bad_output", f"not a JSON line: {line[:200]!r}", self.stderr()) from exc
            if not isinstance(message, dict):
                raise SandboxError("bad_output", f"not a JSON object: {line[:200]!r}", self.stderr())
            if message.get("op") == "started":  # loaded: from now on the views get wall_s each, no more
                self.deadline = min(self.deadline, time.monotonic() + self.limits.wall_s * len(self.calls))
                self.loaded = True
            elif message.get("op") == "ask_llm":
                self._answer(message)
            else:
                return message
        if len(self.buffer) > self.limits.max_output_bytes:
            raise SandboxError("bad_output", f"output larger than {self.limits.max_output_bytes} bytes")
        return None

    def _answer(self, message: dict[str, Any]) -> None:
        index = message.get("view")
        if not isinstance(index, int) or not 0 <= index < len(self.calls):
            raise SandboxError("bad_output", f"ask_llm for unknown view {index!r}")
        self.calls[index] += 1
        if self.calls[index] > self.limits.max_llm_calls:
            raise SandboxError("llm_calls", f"more than {self.limits.max_llm_calls} ask_llm calls for view {index}")
        constraints = message.get("constraints")
        constraints = constraints if isinstance(constraints, dict) else None
        # The request reaches the real model: its size is bounded here, not by the mechanism (a 1 MB guidance
        # string, sixteen times per view, would be spent on a paid endpoint outside any limit of the child).
        guidance = str(message.get("guidance", ""))[:MAX_REQUEST_CHARS]
        start = time.monotonic()
        try:
            if len(json.dumps(constraints)) > MAX_REQUEST_CHARS:
                raise ValueError(f"constraints longer than {MAX_REQUEST_CHARS} characters")
            proposal = self.ask_llm(index, guidance, constraints)
            reply = {"op": "llm", "ok": True, "proposal": proposal}
        except Exception as exc:
            reply = {"op": "llm", "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        finally:
            spent = time.monotonic() - start
            self.llm_time += spent
            self.deadline += spent
        assert self.proc.stdin
        try:
            self.proc.stdin.write((json.dumps(reply) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
