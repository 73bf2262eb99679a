"""The sandbox child: run by file path (``python -s -P mechanisms/_child.py``) in a fresh scratch directory.

Protocol (JSON lines; the child talks on a private copy of stdout, so ``print`` in a mechanism goes to stderr):

- parent -> child, once: ``{"op": "run", "source": str, "views": [view payload, ...]}``
- child -> parent, once the module is loaded: ``{"op": "started"}`` (the views' wall-clock limit starts here)
- child -> parent, per ``view.ask_llm``: ``{"op": "ask_llm", "view": i, "guidance": str, "constraints": dict | null}``
- parent -> child, the answer: ``{"op": "llm", "ok": true, "proposal": {...}}`` or ``{"op": "llm", "ok": false,
  "error": str}``
- child -> parent, last: ``{"op": "result", "name": str, "target": str, "outputs": [...], "seconds": [...],
  "refused": [...]}`` or ``{"op": "error", "kind": str, "message": str, "traceback": str, "view": int | null,
  "refused": [...]}``

The child runs inside the OS sandbox (``mechanisms/jail.py``), which is the boundary. With ``"lint": true`` (the
default; false only in the tests of that boundary) it also lints at run time: after start-up an audit hook refuses
processes, sockets, file access, frame and object-graph introspection and imports outside the policy's allowlist,
and the mechanism's builtins lack open/exec/eval/compile/input and guard imports, so that the usual attempts end as
readable errors. Code in the same interpreter can get around such a hook; it cannot get around the kernel.
"""

import ast
import builtins
import json
import linecache
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mechanisms.base import MechanismView, thaw  # noqa: E402
from mechanisms.policy import ALLOWED_IMPORTS  # noqa: E402

REFUSED_PREFIXES = (
    "socket.",
    "subprocess.",
    "os.system",
    "os.exec",
    "os.posix_spawn",
    "os.spawn",
    "os.fork",
    "os.forkpty",
    "os.kill",
    "os.killpg",
    "os.putenv",
    "os.unsetenv",
    "os.remove",
    "os.rename",
    "os.rmdir",
    "os.mkdir",
    "os.chmod",
    "os.chown",
    "os.link",
    "os.symlink",
    "os.truncate",
    "os.setxattr",
    "os.removexattr",
    "os.utime",
    "os.chdir",
    "os.listdir",
    "os.scandir",
    "os.startfile",
    "shutil.",
    "ctypes.",
    "pty.",
    "open",
    "sys._getframe",
    "sys.setprofile",
    "sys._current_frames",
    "code.__new__",
    "function.__new__",
    "marshal.",
    "pickle.",
    "gc.get_",
    "urllib.",
    "webbrowser.",
    "mmap.",
    "resource.setrlimit",
    "sys.addaudithook",
    "builtins.input",
    "cpython.remote_debugger",
)
FORBIDDEN_BUILTINS = (
    "open",
    "exec",
    "eval",
    "compile",
    "input",
    "breakpoint",
    "globals",
    "locals",
    "vars",
    "memoryview",
    "help",
    "exit",
    "quit",
)
PRELOAD_EXTRA = {"numpy": ("numpy.random", "numpy.linalg")}
# Functions that reach outside the process without raising an audit event, removed before the mechanism runs: files
# created anywhere (mkfifo, mknod), signals to other processes (pidfd), the host clock, scheduling priority, and the
# `_imp` entry points that would build a fresh, unstripped copy of a built-in module (`_imp.create_builtin("posix")`).
OS_UNAUDITED = (
    "mkfifo",
    "mknod",
    "pidfd_open",
    "nice",
    "setpriority",
    "sched_setscheduler",
    "sched_setparam",
    "chroot",
)
UNAUDITED = {
    "posix": OS_UNAUDITED,
    "os": OS_UNAUDITED,  # `os` holds its own references to the posix functions
    "_signal": ("pidfd_send_signal",),
    "time": ("clock_settime", "clock_settime_ns"),
    "_imp": ("create_builtin", "create_dynamic", "exec_builtin", "exec_dynamic", "init_frozen"),
}


class LLMError(RuntimeError):
    """The parent's ask_llm failed; raised inside the mechanism."""


def _allowed(module: str) -> bool:
    return module.split(".")[0] in ALLOWED_IMPORTS


def preload(source: str) -> None:
    """Import the allowlisted modules the source names, before the hook closes imports."""
    for node in ast.walk(ast.parse(source)):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module]
        for name in filter(_allowed, names):
            __import__(name)
            for extra in PRELOAD_EXTRA.get(name.split(".")[0], ()):
                __import__(extra)


def strip_unaudited() -> None:
    """Remove what the audit hook cannot see (see UNAUDITED) from the modules this process has loaded."""
    for module, names in UNAUDITED.items():
        loaded = sys.modules.get(module)
        for name in names:
            if loaded is not None and hasattr(loaded, name):
                delattr(loaded, name)


def install_hook(refused: list[str], quiet: list[bool]) -> None:
    # What the hook reads is bound here, in its own cells, not looked up in this module's globals at each event
    # (a mechanism that reached those globals could otherwise rebind them so that the hook refuses nothing).
    def hook(
        event: str,
        args: tuple[Any, ...],
        prefixes: tuple[str, ...] = REFUSED_PREFIXES,
        allowed: frozenset[str] = frozenset(ALLOWED_IMPORTS),
        modules: dict[str, Any] = sys.modules,
        denied: type[PermissionError] = PermissionError,
    ) -> None:
        if event == "import":
            module = str(args[0])
            if module.split(".")[0] in allowed or module in modules:
                return
        elif not event.startswith(prefixes):
            return
        if not quiet[0]:
            refused.append(event if event != "import" else f"import {args[0]}")
        raise denied(f"sandbox refused {event}")

    sys.addaudithook(hook)


def install_tracer(refused: list[str], quiet: list[bool]) -> None:
    """Record every OSError and MemoryError that reaches the mechanism's own code, caught or not: an operation the
    sandbox refused is a refusal even when the mechanism swallows the error and carries on."""
    seen: set[tuple[int, int]] = set()

    def local(frame: Any, event: str, arg: Any) -> Any:
        if event == "exception" and issubclass(arg[0], (OSError, MemoryError)) and not quiet[0]:
            key = (id(arg[1]), len(seen))
            if all(k[0] != key[0] for k in seen) and len(seen) < 20:
                seen.add(key)
                refused.append(f"{arg[0].__name__} at line {frame.f_lineno}: {arg[1]}"[:200])
        return local

    def calls(frame: Any, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename == "<mechanism>":
            frame.f_trace_lines = False
            return local
        return None

    sys.settrace(calls)  # the hook leaves sys.settrace alone: CPython calls it itself to drop a tracer that raised


def restricted_builtins(refused: list[str]) -> dict[str, Any]:
    real_import = builtins.__import__

    def guarded_import(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> Any:
        if level or not _allowed(name):
            refused.append(f"import {name}")
            raise ImportError(f"sandbox refused import of {name!r}")
        return real_import(name, globals, locals, fromlist, level)

    table = {k: v for k, v in vars(builtins).items() if k not in FORBIDDEN_BUILTINS}
    table["__import__"] = guarded_import
    return table


class Channel:
    def __init__(self) -> None:
        self.out = os.fdopen(os.dup(1), "w", encoding="utf-8")
        os.dup2(2, 1)
        sys.stdout = sys.stderr

    def send(self, message: dict[str, Any]) -> None:
        self.out.write(json.dumps(message, allow_nan=False) + "\n")
        self.out.flush()

    def receive(self) -> dict[str, Any]:
        line = sys.stdin.readline()
        if not line:
            raise LLMError("the parent closed the channel")
        return json.loads(line)

    def asker(self, index: int, waited: list[float]) -> Any:
        def ask_llm(guidance: str, constraints: dict[str, Any] | None) -> dict[str, Any]:
            start = time.perf_counter()
            self.send({"op": "ask_llm", "view": index, "guidance": guidance, "constraints": thaw(constraints)})
            answer = self.receive()
            waited[0] += time.perf_counter() - start
            if not answer.get("ok"):
                raise LLMError(str(answer.get("error", "ask_llm failed")))
            return dict(answer["proposal"])

        return ask_llm


def main() -> None:
    channel = Channel()
    request = json.loads(sys.stdin.readline())
    source = request["source"]
    refused: list[str] = []
    quiet = [False]
    state: dict[str, Any] = {"view": None}

    def fail(kind: str, exc: BaseException) -> None:
        quiet[0] = True
        if refused and kind == "entry":
            kind = "refused"
        if isinstance(exc, MemoryError):
            kind = "memory"
        if isinstance(exc, LLMError):
            kind = "llm"
        tail = "".join(traceback.format_exception(exc))[-4000:]
        channel.send(
            {
                "op": "error",
                "kind": kind,
                "message": f"{type(exc).__name__}: {exc}",
                "traceback": tail,
                "view": state["view"],
                "refused": refused,
            }
        )

    try:
        preload(source)
        linecache.cache["<mechanism>"] = (len(source), None, source.splitlines(True), "<mechanism>")
        code = compile(source, "<mechanism>", "exec")
    except BaseException as exc:
        fail("load", exc)
        return
    namespace: dict[str, Any] = {"__name__": "mechanism"}
    if request.get("lint", True):
        strip_unaudited()
        install_tracer(refused, quiet)  # before the hook, which refuses sys.settrace from then on
        install_hook(refused, quiet)
        namespace["__builtins__"] = restricted_builtins(refused)
    try:
        exec(code, namespace)
        name, target = namespace["NAME"], namespace["TARGET"]
        entry = namespace[target]
    except BaseException as exc:
        fail("load", exc)
        return
    channel.send({"op": "started"})
    outputs, seconds = [], []
    for index, payload in enumerate(request["views"]):
        state["view"] = index
        waited = [0.0]
        try:
            view = MechanismView.from_payload(payload, channel.asker(index, waited))
            start = time.perf_counter()
            output = thaw(entry(view))
            seconds.append(time.perf_counter() - start - waited[0])
        except BaseException as exc:
            fail("entry", exc)
            return
        try:
            json.dumps(output, allow_nan=False)
        except (TypeError, ValueError) as exc:
            fail("output", exc)
            return
        outputs.append(output)
    state["view"] = None
    channel.send(
        {"op": "result", "name": name, "target": target, "outputs": outputs, "seconds": seconds, "refused": refused}
    )


if __name__ == "__main__":
    main()
