"""The embedded model server, end to end through a run (the real SmolLM2 server; slow): killed mid-run it is
restarted before the next call and the run finishes; after a normal exit, Ctrl-C, SIGTERM or an error no server
process is left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from support import SyntheticExecutor, config

from checkpoints.run_folder import Ledger
from graphs.runner import execute
from trials.launcher import TrainerSettings, Trial

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def servers_of(parent: int) -> list[int]:
    """llama.cpp servers whose parent is `parent` (alive, not zombies)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if entry.name.isdigit() and int(fields[1]) == parent and b"llama_cpp.server" in cmdline and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def all_servers() -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"llama_cpp.server" in (entry / "cmdline").read_bytes():
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state not in ("Z", "X"):
                    pids.add(int(entry.name))
        except (OSError, IndexError):
            continue
    return pids


def wait_until(predicate: Any, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return bool(predicate())


def test_a_server_killed_mid_run_is_restarted_and_the_run_finishes(tmp_path: Path) -> None:
    seen: list[list[int]] = []

    class KillsTheServer(SyntheticExecutor):
        def run(self, trial: Trial, settings: TrainerSettings) -> dict[str, Any]:
            pids = servers_of(os.getpid())
            seen.append(pids)
            if trial.experiment_id == "e0000":
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
                wait_until(lambda: not servers_of(os.getpid()), 10)
            return super().run(trial, settings)

    final = execute(config(tmp_path, iterations=1), executor=KillsTheServer(), inner_only=True)
    assert len(final["experiments"]) == 2 and final["stop_reason"] == "iterations done"
    assert len(seen[0]) == 1 and len(seen[1]) == 1 and seen[1] != seen[0]  # a new server answered e0001's call
    log = (tmp_path / "run" / "llm_server.log").read_text(errors="replace")
    assert "restarting the LLM server (restart 1; it had exited: -9)" in log
    calls = list(Ledger(tmp_path / "run").events("llm_call"))
    assert calls and calls[0]["model"] == "smollm2"
    assert wait_until(lambda: not servers_of(os.getpid()) and not set(seen[1]) & all_servers(), 15)


CHILD = textwrap.dedent(
    """
    import sys, time
    sys.path[:0] = [sys.argv[3], sys.argv[3] + "/tests"]
    from support import SyntheticExecutor, config
    from graphs.runner import execute
    from pathlib import Path

    class Executor(SyntheticExecutor):
        def run(self, trial, settings):
            print("training", trial.experiment_id, flush=True)
            if sys.argv[2] == "error":
                raise RuntimeError("the executor failed")
            time.sleep(600 if sys.argv[2] == "signal" else 0)
            return super().run(trial, settings)

    execute(config(Path(sys.argv[1]), iterations=0), executor=Executor(), inner_only=True)
    print("done", flush=True)
    """
)


@pytest.mark.parametrize("how", ["normal exit", "Ctrl-C", "SIGTERM", "an error"])
def test_no_server_is_left_after_the_run_ends(tmp_path: Path, how: str) -> None:
    mode = {"normal exit": "normal", "an error": "error"}.get(how, "signal")
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), mode, str(ROOT)], cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "training e0000"  # the run is open, its server up
        started = servers_of(child.pid)
        assert len(started) == 1
        if mode == "signal":
            child.send_signal(signal.SIGINT if how == "Ctrl-C" else signal.SIGTERM)
        out, err = child.communicate(timeout=300)
        if mode == "normal":
            assert child.returncode == 0 and "done" in out, err[-2000:]
        else:
            assert child.returncode != 0
        if mode == "error":
            assert "the executor failed" in err
        assert wait_until(lambda: not set(started) & all_servers(), 15), f"the server outlived {how}"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
