"""The operating-system boundary for LLM-written code: a bubblewrap (``bwrap``) sandbox.

Everything the project runs that an LLM wrote — a generated mechanism (its validation and every call during a run)
and a code-mode ``train.py`` — starts through :func:`spawn`, which wraps the command in ``bwrap``:

- new user, PID, IPC, UTS, network and cgroup namespaces; uid and gid 65534 inside; no capabilities; no further
  user namespaces (``--disable-userns``); its own session (``--new-session``: no terminal to inject keystrokes into);
  killed by the kernel when the process that started it dies (``--die-with-parent``);
- a filesystem built from an allowlist, all read-only: the system directories (``/usr``, ``/lib*``, ``/bin``), a few
  files of ``/etc`` (never ``/etc/shadow`` or ``/etc/ssh``), the Python installation and the project folders the
  command needs; a fresh ``/proc`` (its own PID namespace: no host process is visible), a minimal ``/dev``; a private
  ``/tmp`` tmpfs of bounded size as the scratch folder; read-write binds only where the caller says (a training's
  own experiment folder, the sandboxed trainings' compiler cache);
- an environment built from an allowlist (:data:`PASSED_ENV`) plus what the caller sets; nothing else is inherited
  (``--clearenv``), so no API key, token or password reaches the child whatever its name;
- rlimits applied before ``bwrap`` starts and inherited by everything inside: CPU seconds, address space, file size,
  open files, processes.

The static policy (``mechanisms/policy.py``) and the child's audit hook (``mechanisms/_child.py``) stay in front of
it as a linter that gives a model readable errors; this module is the boundary.

Where no sandbox can start (no ``bwrap``, or user namespaces switched off), :func:`unavailable` says why and
:class:`SandboxUnavailable` names the Debian package to install. ``--unsafe-no-sandbox`` (see :func:`set_unsafe`)
runs such code without it, loudly.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PACKAGE = "bubblewrap"
INSTALL_HINT = f"install the Debian package `{PACKAGE}` (apt-get install -y {PACKAGE}; scripts/setup.sh does, as root)"
SANDBOX_UID = 65534
REPO_ROOT = Path(__file__).resolve().parent.parent
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# What of /etc a Python program needs (the dynamic linker, names of users and groups, the time zone).
ETC_ENTRIES = (
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "passwd",
    "group",
    "nsswitch.conf",
    "localtime",
    "timezone",
    "os-release",
    "mime.types",
)
# The variables a sandboxed or trusted child may inherit from the driver: locale, time zone, accelerators, thread
# counts and the project's own cache. An allowlist: a variable not named here never reaches the child.
PASSED_ENV = (
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "CUDA_VISIBLE_DEVICES",
    "CUDA_DEVICE_ORDER",
    "CUDA_HOME",
    "CUDA_PATH",
    "NVIDIA_VISIBLE_DEVICES",
    "NVIDIA_DRIVER_CAPABILITIES",
    "HIP_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
    "LD_LIBRARY_PATH",
    "PYTORCH_CUDA_ALLOC_CONF",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "TOKENIZERS_PARALLELISM",
    "BILEVEL_CACHE",
)
# Passed only to children that run outside the sandbox (the model server, parameter-mode trainings): where to find
# programs and the user's cache. Inside the sandbox they are set to the sandbox's own values.
HOST_ENV = ("PATH", "HOME", "USER", "LOGNAME", "TMPDIR", "VIRTUAL_ENV", "XDG_CACHE_HOME")
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"


class SandboxUnavailable(RuntimeError):
    """No sandbox can start on this machine; the message says why and names the package."""


@dataclass(frozen=True)
class Rlimits:
    """Limits the sandboxed process tree starts with (None: not set). ``processes`` counts threads too."""

    cpu_s: int | None = None
    address_space: int | None = None
    file_size: int | None = None
    open_files: int | None = None
    processes: int | None = None

    def apply(self) -> None:
        """In the child before exec."""
        pairs = (
            (resource.RLIMIT_CPU, self.cpu_s, 1),
            (resource.RLIMIT_AS, self.address_space, 0),
            (resource.RLIMIT_FSIZE, self.file_size, 0),
            (resource.RLIMIT_NOFILE, self.open_files, 0),
            (resource.RLIMIT_NPROC, self.processes, 0),
        )
        for kind, value, hard_extra in pairs:
            if value is not None:
                resource.setrlimit(kind, (value, value + hard_extra))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


@dataclass(frozen=True)
class Jail:
    """What one sandboxed command may see and touch."""

    read_only: tuple[str, ...] = ()  # host paths visible read-only at the same path (missing ones are skipped)
    writable: tuple[str, ...] = ()  # host folders bound read-write at the same path
    env: Mapping[str, str] = field(default_factory=dict)  # the whole environment inside (--clearenv first)
    cwd: str = "/tmp"
    tmp_bytes: int = 64 << 20  # size of the private /tmp
    devices: tuple[str, ...] = ()  # host device nodes bound in (accelerators); /sys is then visible too
    processes: bool = False  # may the command start processes (fork, exec)? threads are always allowed

    def command(
        self, argv: Sequence[str], bwrap: str, info_fd: int | None = None, seccomp_fd: int | None = None
    ) -> list[str]:
        cmd = [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session"]
        cmd += ["--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--hostname", "sandbox", "--cap-drop", "ALL"]
        if info_fd is not None:
            cmd += ["--info-fd", str(info_fd)]
        if seccomp_fd is not None:
            cmd += ["--seccomp", str(seccomp_fd)]
        # /proc read-only: as root, bwrap maps the sandbox's uid to the host's uid 0, and the kernel lets uid 0 write
        # sysctls (/proc/sys) and /proc/sysrq-trigger without any capability
        cmd += ["--proc", "/proc", "--remount-ro", "/proc", "--dev", "/dev"]
        cmd += ["--size", str(self.tmp_bytes), "--tmpfs", "/tmp"]  # first: a bind below /tmp goes on top of it
        for path in SYSTEM_DIRS:
            cmd += _expose(path)
        for name in ETC_ENTRIES:
            cmd += _expose(f"/etc/{name}")
        for path in python_paths():
            cmd += _expose(path)
        for path in self.read_only:
            cmd += _expose(str(path))
        for path in self.writable:
            cmd += ["--bind", str(path), str(path)]
        for device in self.devices:
            cmd += ["--dev-bind-try", device, device]
        if self.devices:
            cmd += ["--ro-bind-try", "/sys", "/sys"]
        cmd += ["--clearenv"]
        for key, value in self.env.items():
            cmd += ["--setenv", key, value]
        program = argv[0]
        if os.sep in program and not os.path.isabs(program):  # relative to our cwd, not the sandbox's
            program = os.path.abspath(program)
        cmd += ["--remount-ro", "/", "--chdir", self.cwd, "--", program, *argv[1:]]  # the skeleton, read-only too
        return cmd


def _expose(path: str) -> list[str]:
    """Read-only at the same path; a symlink (merged /usr: /bin -> usr/bin) is recreated as the same symlink."""
    if os.path.islink(path) and os.path.dirname(path) == "/":
        return ["--symlink", os.readlink(path), path]
    return ["--ro-bind-try", path, path]


@functools.cache
def python_paths() -> tuple[str, ...]:
    """The running interpreter's installation (and the virtual environment's), wherever they live."""
    exe = Path(sys.executable)
    found = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, str(exe.resolve().parent.parent)}
    system = tuple(d + "/" for d in SYSTEM_DIRS)
    return tuple(sorted(p for p in found if p and p != "/" and not (p + "/").startswith(system)))


def sandbox_env(extra: Mapping[str, str] = {}, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment inside the sandbox: the allowlisted variables of ``base`` (default: this process's), the
    sandbox's own PATH, HOME and TMPDIR (its private /tmp), then ``extra``."""
    env = passed_env(base)
    return {**env, "PATH": SANDBOX_PATH, "HOME": "/tmp", "TMPDIR": "/tmp", **extra}


def passed_env(base: Mapping[str, str] | None = None, *, host: bool = False) -> dict[str, str]:
    """The allowlisted variables of ``base`` (default: this process's environment); ``host`` adds PATH, HOME and the
    like, for a trusted child that runs outside the sandbox."""
    source = os.environ if base is None else base
    names = PASSED_ENV + (HOST_ENV if host else ())
    return {k: source[k] for k in names if k in source}


# ---- seccomp --------------------------------------------------------------------------------------------------
# A classic-BPF program that bwrap loads just before it execs the command (``--seccomp FD``), for what namespaces
# leave open: kernel interfaces no mechanism or training needs (ptrace, other processes' memory, kernel keyrings,
# BPF, perf, io_uring, mounts and namespaces, modules, reboot), and — for a mechanism — any new process: ``clone``
# without CLONE_THREAD, ``fork``, ``vfork`` fail with EPERM (a fork bomb cannot start; threads still work), ``clone3``
# with ENOSYS (the C library then falls back to ``clone``). x86-64 only; elsewhere the filter is left out.
AUDIT_ARCH_X86_64 = 0xC000003E
X86_64_DENIED = {
    "ptrace": 101, "syslog": 103, "personality": 135, "pivot_root": 155, "chroot": 161, "acct": 163, "mount": 165,
    "umount2": 166, "swapon": 167, "swapoff": 168, "reboot": 169, "sethostname": 170, "setdomainname": 171,
    "iopl": 172, "ioperm": 173, "init_module": 175, "delete_module": 176, "quotactl": 179, "kexec_load": 246,
    "add_key": 248, "request_key": 249, "keyctl": 250, "unshare": 272, "perf_event_open": 298,
    "name_to_handle_at": 303, "open_by_handle_at": 304, "setns": 308, "process_vm_readv": 310,
    "process_vm_writev": 311, "finit_module": 313, "kexec_file_load": 320, "bpf": 321, "userfaultfd": 323,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "fsopen": 430, "fsmount": 432,
    "move_mount": 429, "open_tree": 428, "pidfd_getfd": 438, "mount_setattr": 442,
}  # fmt: skip
X86_64_PROCESS = {"fork": 57, "vfork": 58}
X86_64_CLONE, X86_64_CLONE3 = 56, 435
CLONE_THREAD = 0x00010000
_LD_W_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_ALLOW, _KILL, _ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
EPERM, ENOSYS = 1, 38


def seccomp_program(processes: bool) -> bytes | None:
    """The filter for this machine (None where there is none: not x86-64)."""
    if os.uname().machine != "x86_64":
        return None
    denied = dict(X86_64_DENIED) if processes else {**X86_64_DENIED, **X86_64_PROCESS}
    eperm, allow = _ERRNO | EPERM, _ALLOW
    code: list[tuple[int, int, int, int]] = [
        (_LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
        (_JEQ, 1, 0, AUDIT_ARCH_X86_64),
        (_RET, 0, 0, _KILL),
        (_LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
        (_JGE, 0, 1, 0x40000000),  # the x32 ABI's numbers
        (_RET, 0, 0, _KILL),
    ]
    for number in sorted(denied.values()):
        code += [(_JEQ, 0, 1, number), (_RET, 0, 0, eperm)]
    if not processes:
        code += [(_JEQ, 0, 1, X86_64_CLONE3), (_RET, 0, 0, _ERRNO | ENOSYS)]
        code += [(_JEQ, 0, 3, X86_64_CLONE), (_LD_W_ABS, 0, 0, 16), (_JSET, 1, 0, CLONE_THREAD), (_RET, 0, 0, eperm)]
    code.append((_RET, 0, 0, allow))
    return b"".join(struct.pack("<HBBI", *instruction) for instruction in code)


def _seccomp_fd(processes: bool) -> int | None:
    program = seccomp_program(processes)
    if program is None:
        return None
    fd = os.memfd_create("bilevel-seccomp", 0)
    os.write(fd, program)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


# ---- availability ----------------------------------------------------------------------------------------------

_UNSAFE = threading.Event()


def set_unsafe(on: bool) -> None:
    """``--unsafe-no-sandbox``: LLM-written code runs without the OS sandbox (the linter layers only)."""
    if on:
        _UNSAFE.set()
    else:
        _UNSAFE.clear()


def unsafe() -> bool:
    return _UNSAFE.is_set()


def bwrap_path() -> str | None:
    return shutil.which("bwrap") or next((p for p in ("/usr/bin/bwrap",) if os.access(p, os.X_OK)), None)


@functools.cache
def unavailable() -> str | None:
    """None when a sandbox starts here; else why not (probed once per process by starting one)."""
    if not sys.platform.startswith("linux"):
        return f"the sandbox needs Linux namespaces (this is {sys.platform})"
    bwrap = bwrap_path()
    if bwrap is None:
        return f"bwrap is not installed: {INSTALL_HINT}"
    probe = Jail(env={"PATH": SANDBOX_PATH}).command([sys.executable, "-S", "-c", "print(1)"], bwrap)
    try:
        done = subprocess.run(probe, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap could not start ({exc}); {INSTALL_HINT}, and allow unprivileged user namespaces"
    if done.returncode != 0 or done.stdout.strip() != "1":
        reason = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        return f"bwrap could not start a sandbox here ({reason}): it needs user namespaces; {INSTALL_HINT}"
    return None


def require(what: str) -> None:
    """Raise :class:`SandboxUnavailable` naming ``what`` needed it, unless a sandbox starts or the run is unsafe."""
    reason = unavailable()
    if reason is not None and not unsafe():
        raise SandboxUnavailable(
            f"{what} runs LLM-written code, which runs only inside the OS sandbox, and no sandbox can start here: "
            f"{reason}. To run without it anyway (the code then runs as this user, with this user's files), pass "
            "--unsafe-no-sandbox."
        )


# ---- starting and stopping ---------------------------------------------------------------------------------------


class Jailed:
    """A running sandboxed command: ``popen`` is the outer ``bwrap``; ``kill`` takes the whole sandbox down."""

    def __init__(self, popen: subprocess.Popen[bytes], child_pid: int | None) -> None:
        self.popen = popen
        self.child_pid = child_pid  # the sandbox's PID 1, as the host sees it: its death ends every process inside

    @property
    def pid(self) -> int:
        return self.popen.pid

    def kill(self) -> None:
        """SIGKILL the sandbox's PID 1 (the kernel then kills everything in its PID namespace) and bwrap's group;
        returns once bwrap has exited, which it does only after its PID 1 has."""
        if self.child_pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.child_pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()


def spawn(
    argv: Sequence[str],
    jail: Jail,
    limits: Rlimits,
    *,
    pass_fds: Iterable[int] = (),
    spawner: Callable[..., subprocess.Popen[bytes]] | None = None,
    **popen: Any,
) -> Jailed:
    """Start ``argv`` in the sandbox ``jail`` with ``limits`` (its own session; ``spawner`` defaults to Popen)."""
    bwrap = bwrap_path()
    if bwrap is None:
        raise SandboxUnavailable(f"bwrap is not installed: {INSTALL_HINT}")
    read_end, write_end = os.pipe()
    seccomp = _seccomp_fd(jail.processes)
    fds = (write_end, *(() if seccomp is None else (seccomp,)), *pass_fds)
    try:
        command = jail.command(argv, bwrap, info_fd=write_end, seccomp_fd=seccomp)
        start = spawner or _popen
        popen.setdefault("env", dict(jail.env))  # bwrap's own environment: its PID 1's /proc/1/environ is visible
        proc = start(command, preexec=limits.apply, pass_fds=fds, **popen)
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
        if seccomp is not None:
            os.close(seccomp)
    text = b""
    with os.fdopen(read_end, "rb", buffering=0) as info:
        while chunk := info.read(4096):  # {"child-pid": N} once the sandbox's PID 1 exists; EOF when bwrap is done
            text += chunk
    try:
        child = int(json.loads(text)["child-pid"])
    except (ValueError, KeyError, TypeError):
        child = None
    return Jailed(proc, child)


def _popen(command: list[str], *, preexec: Callable[[], None], **popen: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, start_new_session=True, preexec_fn=preexec, **popen)
