"""kill -9 at any moment, then resume: no experiment lost or run twice, results.tsv, trace and checkpoint agree."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

RUNNER = Path(__file__).resolve().parent / "scripted_run.py"


def start(run_dir: Path, iterations: int, delay: float, level: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(RUNNER), str(run_dir), str(iterations), str(delay), level],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def wait_for(path: Path, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in {path}")


def check_ledger(run_dir: Path, expected: int) -> None:
    events = [json.loads(line) for line in (run_dir / "trace.jsonl").read_text().splitlines() if line.strip()]
    decided = Counter(e["id"] for e in events if e["kind"] == "experiment")
    finished = Counter(e["experiment"] for e in events if e["kind"] == "train_end")
    ids = [f"e{i:04d}" for i in range(expected)]
    assert sorted(decided) == ids and set(decided.values()) == {1}, decided
    assert sorted(finished) == ids and set(finished.values()) == {1}, finished
    with open(run_dir / "results.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [r["commit"] for r in rows] == ids
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["experiments"] == expected


@pytest.mark.parametrize("level", ["inner", "2"])
def test_kill_during_train_then_resume(tmp_path, level):
    run_dir = tmp_path / "run"
    proc = start(run_dir, 6, 1.0, level)
    wait_for(run_dir / "trace.jsonl", '"experiment": "e0003", "kind": "train_start"')
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "summary.json").exists()
    resumed = start(run_dir, 6, 0.0, level)
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err.decode()[-3000:]
    check_ledger(run_dir, 7)


def test_repeated_random_kills(tmp_path):
    """Killed at random moments five times (the soak script does it twenty times and more), the run still ends
    with every experiment exactly once."""
    import random

    rng = random.Random(7)
    run_dir = tmp_path / "run"
    for _ in range(5):
        proc = start(run_dir, 8, 0.2, "2")
        time.sleep(rng.uniform(1.0, 3.0))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    final = start(run_dir, 8, 0.0, "2")
    _, err = final.communicate(timeout=180)
    assert final.returncode == 0, err.decode()[-3000:]
    check_ledger(run_dir, 9)
