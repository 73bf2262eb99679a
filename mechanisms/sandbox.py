"""Run a mechanism's source in a child process, never in the parent.

The child (``mechanisms/_child.py``) runs inside the OS sandbox of ``mechanisms/jail.py`` (bubblewrap: its own user,
PID, network, IPC and mount namespaces, a read-only filesystem of the system, Python, ``mechanisms/`` and the
grammar of train.py's constants block (``gpt/constants.py``, which the search space reads) only, a
private ``/tmp`` as its cwd, no inherited environment, no new processes, CPU / address-space / file-size /
open-file / process limits); that is the boundary. Inside it, the static policy and an audit hook act as a linter
that turns the usual attempts into readable errors. The mechanism's ``view.ask_llm`` calls come back to the parent
as request lines and are answered with the real ``ask_llm``; their time does not count against the wall-clock
limit. The protocol is documented in ``_child.py``. Every failure reaches the caller as a :class:`SandboxError`,
never as another exception; a child whose lines are too long or nested too deep is refused before they are parsed.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import re
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

from gpt import constants
from mechanisms import jail
from mechanisms.base import MechanismSpec
from mechanisms.policy import check_source

CHILD = Path(__file__).with_name("_child.py")
GRAMMAR = (str(Path(constants.__file__).with_name("__init__.py")), constants.__file__)  # of gpt/, only these
CLONE_NEWNET = 0x40000000
CHILD_ENV = {
    "PYTHONHASHSEED": "0",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONNOUSERSITE": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "LC_ALL": "C.UTF-8",
}
_LIBC = ctypes.CDLL(None, use_errno=True)
MAX_REQUEST_CHARS = 2_000  # guidance (truncated) and constraints (refused beyond) of one ask_llm request
MAX_DEPTH = 32  # nesting of a JSON line from the child, checked before it is parsed (json recurses per level)
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")

ManyAsk = Callable[[int, str, "dict[str, Any] | None"], dict[str, Any]]


class SandboxError(RuntimeError):
    """A mechanism that could not run to a valid result; ``kind`` says why.

    Kinds: policy, sandbox (no sandbox could start), timeout, memory, cpu, file_size, crash, load, entry, refused,
    llm, llm_calls, output, bad_output.
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
    # RLIMIT_NPROC, threads included. Generous: the kernel also counts the user's other processes against it (it does
    # not apply it at all to a root driver's children), and seccomp already refuses a mechanism any new process.
    processes: int = 1024
    scratch_bytes: int = 16 << 20  # the private /tmp
    max_output_bytes: int = 1 << 20
    max_llm_calls: int = 16  # per view
    network_namespace: bool = True  # --unsafe-no-sandbox only (the sandbox always has its own network namespace)


@dataclass(frozen=True)
class RunStats:
    seconds: float  # wall time of the child, without the parent's ask_llm time
    view_seconds: list[float]  # the entry's own time per view, measured in the child
    llm_calls: list[int]  # ask_llm requests per view
    refused: list[str] = field(default_factory=list)  # audit-hook refusals (a run that has any raises "refused")


def json_depth(line: bytes) -> int:
    """How deep the arrays and objects of a JSON text nest, without parsing it (strings are skipped)."""
    skeleton = _STRINGS.sub(b"", line).translate(None, _NOT_BRACKETS)
    if not skeleton:
        return 0
    return max(itertools.accumulate(1 if c in b"[{" else -1 for c in skeleton))


def _rlimits(limits: SandboxLimits, views: int) -> jail.Rlimits:
    cpu = int(limits.cpu_s * max(1, views) + limits.startup_s)
    return jail.Rlimits(cpu, limits.memory_bytes, limits.file_size_bytes, limits.open_files, limits.processes)


def _unsafe_preexec(limits: SandboxLimits, views: int) -> Callable[[], None]:
    """--unsafe-no-sandbox: the rlimits, and a network namespace where this process may create one."""
    rlimits = replace(_rlimits(limits, views), processes=None)

    def setup() -> None:
        rlimits.apply()
        unshare = getattr(_LIBC, "unshare", None)  # Linux only
        if limits.network_namespace and unshare is not None:
            unshare(CLONE_NEWNET)  # needs CAP_SYS_ADMIN; without it the audit hook still refuses sockets
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))  # not enforced for root; the audit hook refuses forks

    return setup


def _exit_reason(code: int) -> str:
    by_signal = {-signal.SIGXCPU: "cpu", -signal.SIGXFSZ: "file_size", -signal.SIGKILL: "memory"}
    return by_signal.get(code, "crash")


def mechanism_jail(limits: SandboxLimits) -> jail.Jail:
    """What a mechanism's child sees: the system, Python, ``mechanisms/`` and the block's grammar (read-only), a
    private /tmp; no processes."""
    env = {**CHILD_ENV, "PATH": jail.SANDBOX_PATH, "HOME": "/tmp", "TMPDIR": "/tmp"}
    return jail.Jail(read_only=(str(CHILD.parent), *GRAMMAR), env=env, cwd="/tmp", tmp_bytes=limits.scratch_bytes)


class SandboxedMechanism:
    """A mechanism spec that runs in a child process per call.

    ``mech(view_payload, ask_llm)`` returns the entry's output for one view; ``run_many`` runs several views in one
    child (validation uses it). ``last_stats`` holds the counts of the latest run. With ``enforce_policy`` (the
    default) the constructor refuses source that fails the static policy; ``lint=False`` also leaves the child's
    audit hook and restricted builtins out, so that only the OS sandbox stands between the source and the machine
    (the escape tests use it).
    """

    def __init__(
        self,
        spec: MechanismSpec,
        limits: SandboxLimits | None = None,
        *,
        enforce_policy: bool = True,
        lint: bool = True,
    ):
        if enforce_policy and lint:
            report = check_source(spec.source)
            if not report.ok:
                raise SandboxError("policy", "; ".join(report.messages()))
        self.spec = spec
        self.limits = limits or SandboxLimits()
        self.lint = lint
        self.last_stats: RunStats | None = None

    def __call__(
        self, view_payload: Mapping[str, Any], ask_llm: Callable[[str, dict[str, Any] | None], dict[str, Any]]
    ) -> dict[str, Any]:
        return self.run_many([view_payload], lambda _index, guidance, constraints: ask_llm(guidance, constraints))[0]

    def run_many(
        self, payloads: Sequence[Mapping[str, Any]], ask_llm: ManyAsk, *, deadline: float | None = None
    ) -> list[dict[str, Any]]:
        """Outputs of the entry for each payload (``params`` set from the spec), in order. ``deadline`` (a
        ``time.monotonic()`` value) bounds the whole run on top of the per-view limits. Raises only SandboxError."""
        try:
            views = [{**payload, "params": self.spec.params} for payload in payloads]
            request = {"op": "run", "source": self.spec.source, "views": views, "lint": self.lint}
            line = json.dumps(request, allow_nan=False) + "\n"
            return self._run(line, len(views), ask_llm, deadline)
        except SandboxError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, the caller gets a recorded refusal
            raise SandboxError("crash", f"the sandbox failed: {type(exc).__name__}: {exc}"[:2000]) from exc

    def _start(self, n: int, scratch: str) -> jail.Jailed:
        command = [sys.executable, "-s", "-P", str(CHILD)]
        pipes: dict[str, Any] = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
        if jail.unsafe():
            proc = subprocess.Popen(
                command,
                cwd=scratch,
                env={**CHILD_ENV, "TMPDIR": scratch},
                close_fds=True,
                start_new_session=True,
                preexec_fn=_unsafe_preexec(self.limits, n),
                **pipes,
            )
            return jail.Jailed(proc, None)
        reason = jail.unavailable()
        if reason is not None:
            raise SandboxError("sandbox", f"no OS sandbox can start, so the mechanism does not run: {reason}")
        return jail.spawn(command, mechanism_jail(self.limits), _rlimits(self.limits, n), **pipes)

    def _run(self, request: str, n: int, ask_llm: ManyAsk, deadline: float | None) -> list[dict[str, Any]]:
        scratch = tempfile.mkdtemp(prefix="mechanism-") if jail.unsafe() else ""
        try:
            child = self._start(n, scratch)
            try:
                message, session = self._talk(child, request, n, ask_llm, deadline)
            finally:
                child.kill()
        finally:
            if scratch:
                shutil.rmtree(scratch, ignore_errors=True)
        if message is None:
            code = child.popen.returncode
            raise SandboxError(_exit_reason(code), f"the child exited ({code}) without a result", session.stderr())
        refused = [str(r) for r in message.get("refused", [])] if isinstance(message.get("refused"), list) else []
        if message.get("op") == "error":
            view = message.get("view")
            where = f" (view {view})" if view is not None else ""
            also = f"; refused: {', '.join(refused)}" if refused else ""
            raise SandboxError(
                str(message.get("kind", "crash")),
                f"{message.get('message')}{where}{also}",
                str(message.get("traceback", "")),
            )
        outputs = message.get("outputs")
        if message.get("op") != "result" or not isinstance(outputs, list) or len(outputs) != n:
            raise SandboxError("bad_output", f"malformed final message: {str(message)[:200]}")
        if refused:  # it tried, was stopped, caught the error and carried on: still a refusal
            raise SandboxError("refused", f"the sandbox refused {', '.join(refused[:5])} (the mechanism caught it)")
        bad = [i for i, out in enumerate(outputs) if not isinstance(out, dict)]
        if bad:
            raise SandboxError("bad_output", f"view {bad[0]}: the entry returned {type(outputs[bad[0]]).__name__}")
        seconds = message.get("seconds")
        self.last_stats = RunStats(
            session.elapsed(),
            [float(s) for s in seconds] if isinstance(seconds, list) else [],
            session.calls,
            refused,
        )
        return outputs

    def _talk(
        self, child: jail.Jailed, request: str, n: int, ask_llm: ManyAsk, deadline: float | None
    ) -> tuple[dict[str, Any] | None, _Session]:
        proc = child.popen
        assert proc.stdin and proc.stdout and proc.stderr
        session = _Session(proc, self.limits, n, ask_llm, deadline)
        try:
            proc.stdin.write(request.encode())
            proc.stdin.flush()
        except BrokenPipeError:
            pass
        return session.serve(), session

    def with_limits(self, **changes: Any) -> SandboxedMechanism:
        return SandboxedMechanism(self.spec, replace(self.limits, **changes), enforce_policy=False, lint=self.lint)


class _Session:
    """The parent's side of one child: reads messages, answers ask_llm, enforces time and output limits."""

    def __init__(
        self, proc: subprocess.Popen[bytes], limits: SandboxLimits, n: int, ask_llm: ManyAsk, total: float | None
    ) -> None:
        self.proc, self.limits, self.ask_llm = proc, limits, ask_llm
        self.calls = [0] * n
        self.start = time.monotonic()
        self.llm_time = 0.0
        self.deadline = self.start + limits.startup_s + limits.wall_s * max(1, n)
        self.total = total  # a hard end that ask_llm time does not move (validation's total time limit)
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
            now = time.monotonic()
            if self.total is not None and now >= self.total:
                raise SandboxError("timeout", "the total time limit of this validation ran out", self.stderr())
            remaining = min(self.deadline, self.total if self.total is not None else self.deadline) - now
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
            if json_depth(line) > MAX_DEPTH:
                raise SandboxError("bad_output", f"output nested deeper than {MAX_DEPTH} levels")
            try:
                message = json.loads(line)
            except (ValueError, RecursionError) as exc:
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
