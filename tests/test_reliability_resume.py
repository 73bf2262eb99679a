"""Kill -9 soak (short) and a lost or corrupt checkpoint database: a clear error naming the command, then the run
continues from its ledger with nothing lost or duplicated."""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from checkpoints.rebuild import LedgerError, inner_state, trace_events
from checkpoints.sqlite import CheckpointError, checkpoint_path, open_checkpointer
from graphs.cli import resume_from_ledger
from graphs.run_config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
SOAK = ROOT / "scripts" / "soak.py"
sys.path.insert(0, str(ROOT / "scripts"))

import soak  # noqa: E402

ITERATIONS = 6


def child(run_dir: Path, iterations: int = ITERATIONS, delay: float = 0.0) -> subprocess.Popen[bytes]:
    """The soak's own run (Level 2, generated mechanism, scripted model, synthetic executor) as a process."""
    cmd = [sys.executable, str(SOAK), "--child", str(run_dir), "--iterations", str(iterations), "--segment", "3",
           "--delay", str(delay)]  # fmt: skip
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def kill_after(run_dir: Path, marker: str, iterations: int = ITERATIONS) -> None:
    """Start the run and kill -9 it once `marker` is in its trace."""
    proc = child(run_dir, iterations, delay=0.3)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        trace = run_dir / "trace.jsonl"
        if trace.exists() and marker in trace.read_text():
            break
        time.sleep(0.05)
    else:
        proc.kill()
        raise AssertionError(f"{marker!r} never appeared in the trace")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.stderr is not None
    proc.stderr.close()


def finish(run_dir: Path, iterations: int = ITERATIONS) -> None:
    """Run (or resume) the soak's run to its end, in this process."""
    soak.child(run_dir, iterations, 3, 0.0, 0)


def damage(path: Path, how: str) -> None:
    """missing; garbage (not a database); truncated (to half, after folding the WAL in); wal-lost (the WAL, which
    holds every step since the last fold, deleted: what copying only graph.sqlite does)."""
    if how == "truncated":
        with sqlite3.connect(path) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for extra in path.parent.glob(path.name + "-*"):
        extra.unlink()
    if how == "missing":
        path.unlink()
    elif how == "garbage":
        path.write_bytes(b"this is not a database" * 512)
    elif how == "truncated":
        size = path.stat().st_size
        assert size > 8192, size
        path.write_bytes(path.read_bytes()[: size // 2])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run of the soak's kind (4 experiments), to read, never to change: copy it first."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    finish(run_dir, iterations=3)
    return run_dir


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run killed while it trained e0004 (in its second segment, after a mechanism was injected), to copy."""
    run_dir = tmp_path_factory.mktemp("killed") / "run"
    kill_after(run_dir, '"experiment": "e0004", "kind": "train_start"')
    return run_dir


def copy_run(source: Path, tmp_path: Path) -> Path:
    shutil.copytree(source, tmp_path / "run")
    config = RunConfig.load(tmp_path / "run")
    config.run_dir = str(tmp_path / "run")
    config.save()
    return tmp_path / "run"


@pytest.mark.slow
def test_soak_short_eight_kills(tmp_path: Path) -> None:
    """The soak script, short: 8 kills at random moments, then every check of the full soak."""
    out = subprocess.run(
        [sys.executable, str(SOAK), "--kills", "8", "--iterations", "14", "--seed", "3",
         "--run-dir", str(tmp_path / "run")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert report["ok"] and report["kills"] == 8 and report["problems"] == []
    assert report["lost"] == [] and report["duplicated"] == [] and report["experiments"] == 15
    assert report["orphans"] == [] and report["stop_reason"] == "all iterations done"


def test_the_soak_check_catches_a_lost_or_duplicated_experiment(finished_run: Path, tmp_path: Path) -> None:
    run_dir = copy_run(finished_run, tmp_path)
    assert soak.check(run_dir, 4, synthetic=True)["ok"]
    trace = run_dir / "trace.jsonl"
    lines = trace.read_text().splitlines(True)
    decided = [line for line in lines if '"kind": "experiment"' in line]
    trace.write_text("".join(lines) + decided[1])  # the same experiment recorded twice
    report = soak.check(run_dir, 4, synthetic=True)
    assert not report["ok"] and report["duplicated"] == ["e0001"]
    trace.write_text("".join(line for line in lines if line != decided[2]))  # one lost
    report = soak.check(run_dir, 4, synthetic=True)
    assert not report["ok"] and report["lost"] == ["e0002"]
    assert soak.leftovers(run_dir) == []
    straggler = subprocess.Popen(["sleep", "60"], cwd=run_dir / "experiments" / "e0001")  # a trainer left behind
    try:
        assert [line.split(":")[0] for line in soak.leftovers(run_dir)] == [str(straggler.pid)]
    finally:
        straggler.kill()
        straggler.wait()


@pytest.mark.parametrize("how", ["missing", "garbage", "truncated", "wal-lost"])
def test_a_lost_or_corrupt_checkpoint_names_the_command_then_continues_from_the_ledger(
    killed_run: Path, tmp_path: Path, how: str
) -> None:
    run_dir = copy_run(killed_run, tmp_path)
    decided_before = [e for e in trace_events(run_dir) if e["kind"] == "experiment"]
    damage(checkpoint_path(run_dir), how)

    # the plain resume refuses, and says what to run (the CLI fails before it would start any model)
    with pytest.raises(CheckpointError) as info:
        with open_checkpointer(run_dir):
            pass
    assert f"python -m graphs.bilevel resume {run_dir} --from-ledger" in str(info.value)
    if how == "garbage":  # the command line says the same, without a traceback, before it starts any model
        cli = subprocess.run([sys.executable, "-m", "graphs.bilevel", "resume", str(run_dir)], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        assert cli.returncode == 2, cli.stdout + cli.stderr
        assert "--from-ledger" in cli.stdout and "Traceback" not in cli.stdout + cli.stderr

    undecided = f"e{len(decided_before):04d}"  # proposed, maybe trained, when the kill came
    assert (run_dir / "experiments" / undecided / "proposal.json").exists()
    note = resume_from_ledger(RunConfig.load(run_dir))
    assert f"rebuilt from the ledger: {len(decided_before)} experiments" in note
    assert undecided in note  # set aside: its outcome must not be reused for a new proposal under its id
    finish(run_dir)
    report = soak.check(run_dir, ITERATIONS + 1, synthetic=True)
    assert report["ok"], report["problems"]
    decided_after = [e for e in trace_events(run_dir) if e["kind"] == "experiment"]
    assert decided_after[: len(decided_before)] == decided_before  # the recorded experiments are kept as they were
    aside = list((run_dir / "set-aside").glob(f"*/experiments/{undecided}"))
    assert len(aside) == 1 and (aside[0] / "proposal.json").exists()
    if how != "missing":
        assert list((run_dir / "set-aside").glob("*/checkpoints/graph.sqlite"))  # kept for inspection
    with open_checkpointer(run_dir):  # the new database opens cleanly
        pass


def test_the_ledger_state_follows_the_decide_rules(finished_run: Path) -> None:
    events = trace_events(finished_run)
    state = inner_state(events, {}, 4)
    final = soak.checkpoint_state(finished_run)["inner"]
    assert [e["status"] for e in final["experiments"]].count("keep") >= 2  # an incumbent other than the baseline
    for key in ("experiments", "incumbent", "incumbent_id", "best_bpb", "best_id", "settings", "iteration"):
        assert state[key] == final[key], key
    with pytest.raises(LedgerError, match="not e0000.. in order"):
        inner_state([e for e in events if e.get("id") != "e0002"], {}, 4)


def test_an_inner_only_run_continues_from_the_ledger(tmp_path: Path) -> None:
    from support import SyntheticExecutor, change

    from graphs.runner import execute
    from llm.scripted import ScriptedChatModel

    config = RunConfig(run_dir=str(tmp_path / "run"), level="1", iterations=5, segment=6, budget_s=1.0)
    script = [change("MATRIX_LR", v) for v in (0.05, 0.06, 0.07, 0.09, 0.1, 0.12)]

    class Crash(SyntheticExecutor):
        def run(self, trial, settings):  # type: ignore[no-untyped-def]
            if trial.experiment_id == "e0003":
                raise KeyboardInterrupt  # stands in for a kill while e0003 trains
            return super().run(trial, settings)

    with pytest.raises(KeyboardInterrupt):
        execute(config, llm=ScriptedChatModel(script=script), executor=Crash(), inner_only=True)
    checkpoint_path(tmp_path / "run").unlink()
    resume_from_ledger(RunConfig.load(tmp_path / "run"))
    executor = SyntheticExecutor()
    final = execute(RunConfig.load(tmp_path / "run"), llm=ScriptedChatModel(script=script[3:], cycle=True),
                    executor=executor, inner_only=True)  # fmt: skip
    assert [e["id"] for e in final["experiments"]] == [f"e{i:04d}" for i in range(6)]
    assert executor.runs == ["e0003", "e0004", "e0005"]
