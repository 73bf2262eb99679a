"""A warm trial worker: torch, its compiler and the data are imported once; every trial is forked from it and runs
in a process of its own, exactly as `python train.py ...` would, only without paying the start-up again.

    python -m gpt.worker --corpus shakespeare --vocab-size 4096     # then one JSON request per line on stdin

A request: {"train_py": path, "args": [...], "log": path, "cwd": path, "memory_limit_bytes": int | null}.
The worker answers two lines per request: {"pid": PID} as soon as the trial is forked (the trial leads its own
process group, so the caller can kill it and everything it started), then {"pid": PID, "returncode": RC,
"cpu_seconds": S} when it ends (a negative RC is the signal that killed it; S its CPU time, children included).
The trial's stdout and stderr go to `log`; it dies with the worker. OpenMP's thread pool is not fork-safe, so the
worker never starts one: its only tensor operations (`warm_first_compile`) run on one thread, and every trial starts
a pool of its own, as a fresh process does.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import resource
import runpy
import signal
import sys
import time
import traceback
from typing import IO, Any

PR_SET_PDEATHSIG = 1


def preload(corpus: str | None, vocab_size: int | None) -> str | None:
    """What every trial would otherwise import and load for itself; why the data could not be loaded, if not (each
    trial then loads, or fails to load, its own)."""
    import numpy  # noqa: F401
    import torch  # noqa: F401
    import torch._dynamo  # noqa: F401  (torch.compile's front end)
    import torch._inductor.compile_fx  # noqa: F401  (and its back end: seconds of imports)

    from gpt import evaluate, prepare, runtime  # noqa: F401

    warm_compiler()
    warm_first_compile()
    if corpus is None:
        return None
    vocab_size = vocab_size or prepare.DEFAULT_VOCAB_SIZE
    try:
        # loaded here once and shared by every fork, copy-on-write; a trial asking for other data loads its own
        loaded, load = prepare.load_data(corpus, vocab_size), prepare.load_data
    except Exception as e:
        return f"{type(e).__name__}: {e}"

    def load_data(c: str = prepare.DEFAULT_CORPUS, v: int = prepare.DEFAULT_VOCAB_SIZE) -> prepare.Data:
        return loaded if (c, v) == (corpus, vocab_size) else load(c, v)

    prepare.load_data = load_data  # type: ignore[assignment]
    return None


def warm_compiler() -> None:
    """What inductor works out once per process on a training's first compile, worked out here for every fork: the
    CPU's vector instruction sets (it builds probe libraries and loads each in a fresh interpreter: ten subprocesses)
    and the hash of torch's own sources. Neither runs a tensor operation. A failure is left to each trial."""
    try:
        from torch._inductor import codecache, cpu_vec_isa

        cpu_vec_isa.valid_vec_isa_list()
        codecache.torch_key()
    except Exception:  # noqa: BLE001 (an optimisation only: the trial computes them itself)
        pass


def warm_first_compile() -> None:
    """torch.compile's first use in a process sets up dynamo, AOT autograd and inductor for good: 0.7 s of every
    trial's first step (measured on the 2-core CPU, forked trials, the model from the inductor cache: 1.75 s → 1.05 s).
    Done here once, on a tiny function of the worker's own — never train.py's code, whose second compile at other
    shapes dynamo would take as dynamic — and on one thread, so that OpenMP starts no pool before the fork. A failure
    is left to each trial."""
    try:
        import torch
        import torch.nn.functional as F

        try:
            import tqdm  # type: ignore[import-untyped]

            tqdm.tqdm.monitor_interval = 0  # inductor's progress bars would start tqdm's monitor thread
        except ImportError:
            pass
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            layer = torch.nn.Linear(8, 8)

            def tiny(x: torch.Tensor) -> torch.Tensor:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    h = torch.relu(layer(x)).square()
                    return F.rms_norm(h, (8,)).float().tanh().sum()

            torch.compile(tiny)(torch.randn(4, 8, requires_grad=True)).backward()
        finally:
            torch.set_num_threads(threads)
    except Exception:  # noqa: BLE001 (an optimisation only)
        pass


def compile_in_process() -> None:
    """Make the forked trial's torch.compile build its kernels in the trial's own process (compile_threads = 1)
    instead of starting inductor's compile-worker pool: a sidecar process answering over pipes to a reader thread,
    the one part of the compiler each fork sets up afresh. On the 2-core CPU, five forked trials in a row from one
    worker, each with a graph new to the cache, hung there — their kernels' C++ written, never built, killed at the
    timeout — while trials with a cached graph trained, and a cold training of the same file built and trained in
    45 s. The cause was not isolated; the pool is taken out of the fork's path. On two cores it saved no measurable
    time (a new graph's cold training took 48-54 s with and without it), and compilation is outside the training
    budget, so no result changes; on a many-core GPU machine it costs wall-clock time only."""
    try:
        import torch._inductor.config as inductor_config

        inductor_config.compile_threads = 1
    except Exception:  # noqa: BLE001 (torch without inductor: nothing compiles)
        pass


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def run_trial(request: dict[str, Any]) -> int:
    """In the forked child: become the trial, run train.py as __main__, return its exit code."""
    from gpt import runtime

    os.setsid()
    _die_with_parent()
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    os.chdir(request["cwd"])
    limit = request.get("memory_limit_bytes")
    if limit:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    compile_in_process()
    runtime.PROCESS_START = time.time()  # the trial's own start-up, not the worker's
    script = str(request["train_py"])
    sys.argv = [script, *map(str, request.get("args", []))]
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    try:
        runpy.run_path(script, run_name="__main__")
        return 0
    except SystemExit as e:
        code = e.code
        if code is None or isinstance(code, int):
            return int(code or 0)
        print(code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1


def serve(requests: IO[str], replies: IO[str]) -> None:
    def reply(message: dict[str, Any]) -> None:
        replies.write(json.dumps(message) + "\n")
        replies.flush()

    for line in requests:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            assert isinstance(request, dict) and request.get("train_py") and request.get("log")
        except (ValueError, AssertionError):
            reply({"error": f"not a request: {line[:200]!r}"})
            continue
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = run_trial(request)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        reply({"pid": pid})
        _, status, usage = os.wait4(pid, 0)
        cpu = usage.ru_utime + usage.ru_stime  # the caller's rusage never sees a grandchild's CPU time
        reply({"pid": pid, "returncode": os.waitstatus_to_exitcode(status), "cpu_seconds": round(cpu, 3)})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gpt.worker", description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default=None, help="load this corpus's data once (default: each trial loads it)")
    ap.add_argument("--vocab-size", type=int, default=None)
    args = ap.parse_args(argv)
    _die_with_parent()
    started = time.time()
    data_error = preload(args.corpus, args.vocab_size)
    gc.freeze()  # what is loaded stays: no trial's garbage collection walks it (or copies its pages)
    ready = {"ready": True, "preload_seconds": round(time.time() - started, 3), "data_error": data_error}
    print(json.dumps(ready), flush=True)
    serve(sys.stdin, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
