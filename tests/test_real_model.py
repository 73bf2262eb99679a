"""End to end with the real embedded model (SmolLM2-135M served by llama.cpp) and the real trainer: slow, and run
by CI all the same."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from checkpoints.run_folder import Ledger
from graphs.run_config import RunConfig

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
REPO = Path(__file__).resolve().parent.parent


def server_left(run_dir: Path) -> list[str]:
    """The run's own model server processes still alive (other runs may have servers of their own)."""
    port = re.search(r"127\.0\.0\.1:(\d+)", (run_dir / "llm_server.log").read_text()).group(1)
    found = subprocess.run(["pgrep", "-af", f"llama_cpp.server.*--port {port}"], capture_output=True, text=True)
    return [line for line in found.stdout.splitlines() if "pgrep" not in line]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=1800)


def test_two_iterations_of_the_inner_loop(tmp_path):
    run_dir = tmp_path / "inner"
    done = run_cli(
        "-m",
        "graphs.inner",
        "--iterations",
        "2",
        "--budget-s",
        "3",
        "--eval-tokens",
        "16384",
        "--run-dir",
        str(run_dir),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ledger = Ledger(run_dir)
    experiments = [e for e in ledger.events("experiment")]
    assert [e["id"] for e in experiments] == ["e0000", "e0001", "e0002"]
    assert experiments[0]["status"] == "keep" and isinstance(experiments[0]["val_bpb"], float)
    calls = list(ledger.events("llm_call"))
    assert calls and all(c["model"] and c["latency_s"] > 0 for c in calls)
    assert all(e["proposal_source"] in ("llm", "fallback") for e in experiments[1:])
    assert (run_dir / "results.tsv").read_text().count("\n") == 4
    assert server_left(run_dir) == []


def test_a_minimal_bilevel_run_one_segment_one_compose_cycle(tmp_path):
    run_dir = tmp_path / "bilevel"
    done = run_cli(
        "-m",
        "graphs.bilevel",
        "--iterations",
        "3",
        "--segment",
        "2",
        "--budget-s",
        "3",
        "--eval-tokens",
        "16384",
        "--run-dir",
        str(run_dir),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert RunConfig.load(run_dir).level == "2"
    ledger = Ledger(run_dir)
    generated = list(ledger.events("generate"))
    assert generated and generated[0]["mode"] == "compose"
    validated = list(ledger.events("validate"))
    assert validated and validated[0]["ok"], validated
    injected = [e for e in ledger.events("inject") if e["injected"]]
    assert len(injected) == 1 and injected[0]["origin"] == "composed"
    ran = [e for e in ledger.events("mechanism_call") if e["mechanism"] == injected[0]["mechanism"]]
    assert len(ran) == 2  # the composed mechanism proposed both experiments of the second segment
    assert len(list(ledger.events("experiment"))) == 4
    assert "run folder" in done.stdout
    assert (run_dir / "report.md").exists() and (run_dir / "progress.png").exists()
    assert server_left(run_dir) == []
