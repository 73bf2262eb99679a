"""The parent's side of the warm trial worker: trials run and time out like cold ones, and a dead worker is
started again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from test_gpt_train import EVAL_TOKENS, TINY, VOCAB, copy_train, tiny_corpus_env

from trials.warm_worker import WarmWorker, WorkerError

ROOT = Path(__file__).resolve().parents[1]


def _spawn(command: list[str], **popen) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, start_new_session=True, **popen)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return tiny_corpus_env(tmp_path_factory.mktemp("warm-worker"))


@pytest.fixture()
def worker(env: dict[str, str]):
    w = WarmWorker(env["CORPUS"], VOCAB, env, ROOT, _spawn)
    yield w
    w.close()


def _args(env: dict[str, str], folder: Path, budget: float) -> list[str]:
    return ["--budget-s", str(budget), "--corpus", env["CORPUS"], "--vocab-size", str(VOCAB),
            "--eval-tokens", str(EVAL_TOKENS), "--result-json", str(folder / "result.json")]  # fmt: skip


def test_a_trial_runs_and_reports_its_own_cpu_time(worker: WarmWorker, env: dict[str, str], tmp_path: Path) -> None:
    script = copy_train(tmp_path / "e0", **TINY)
    run = worker.run(_args(env, script.parent, 3.0), script, script.parent / "log.txt", 8 << 30, timeout_s=300)
    assert run.returncode == 0 and not run.timed_out, (script.parent / "log.txt").read_text()[-2000:]
    assert run.cpu_seconds > 1.0  # it trained for seconds on this process's grandchild
    assert json.loads((script.parent / "result.json").read_text())["val_bpb"] > 0
    assert worker.preload_seconds is not None and worker.preload_seconds > 0


def test_a_trial_past_its_timeout_is_killed_and_the_worker_serves_the_next(
    worker: WarmWorker, env: dict[str, str], tmp_path: Path
) -> None:
    slow = copy_train(tmp_path / "slow", **TINY)
    run = worker.run(_args(env, slow.parent, 200.0), slow, slow.parent / "log.txt", None, timeout_s=8)
    assert run.timed_out and run.returncode == -signal.SIGKILL
    fast = copy_train(tmp_path / "fast", **TINY)
    assert worker.run(_args(env, fast.parent, 2.0), fast, fast.parent / "log.txt", None, timeout_s=300).returncode == 0


def test_a_worker_that_dies_mid_trial_loses_it_as_an_error_and_starts_again(
    worker: WarmWorker, env: dict[str, str], tmp_path: Path
) -> None:
    worker.start()
    assert worker.proc is not None
    killer = threading.Timer(3.0, os.kill, (worker.proc.pid, signal.SIGKILL))
    killer.start()
    slow = copy_train(tmp_path / "slow", **TINY)
    with pytest.raises(WorkerError, match="exited"):
        worker.run(_args(env, slow.parent, 200.0), slow, slow.parent / "log.txt", None, timeout_s=120)
    killer.join()
    script = copy_train(tmp_path / "e", **TINY)
    run = worker.run(_args(env, script.parent, 2.0), script, script.parent / "log.txt", None, timeout_s=300)
    assert run.returncode == 0


def test_the_local_executor_forks_parameter_trials_from_its_worker_and_counts_their_cpu_as_its_own(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trials.launcher import LocalExecutor, TrainerSettings, Trial

    monkeypatch.setenv("BILEVEL_CACHE", env["BILEVEL_CACHE"])  # the allowlist passes it on to the worker
    settings = TrainerSettings(budget_s=3.0, corpus=env["CORPUS"], vocab_size=VOCAB, eval_tokens=EVAL_TOKENS)
    executor = LocalExecutor(warm=True)
    try:
        outcomes = [
            executor.run(Trial(f"e{i}", copy_train(tmp_path / f"e{i}", **TINY).parent), settings) for i in range(2)
        ]
        assert len(executor.workers) == 1  # one worker served both
        pid = executor.workers[0].proc.pid if executor.workers[0].proc else None
    finally:
        executor.close()
    for outcome in outcomes:
        assert outcome["ok"] and outcome["warm_worker"] == "used", outcome
        assert outcome["result"]["val_bpb"] > 0
        assert 0.0 <= outcome["other_cpu_share"] <= 1.0
    assert pid is not None and not os.path.exists(f"/proc/{pid}")  # closed: no worker left behind


def test_the_cpu_of_a_trial_reaped_by_the_worker_is_not_counted_as_other_load() -> None:
    from trials.machine_load import CpuSnapshot, other_share

    before = CpuSnapshot(at=0.0, machine_busy_s=0.0, self_s=0.0, children_s=0.0, cpus=2)
    after = CpuSnapshot(at=10.0, machine_busy_s=11.0, self_s=0.5, children_s=0.0, cpus=2)  # 10.5 s nobody reaped
    assert other_share(before, after) == pytest.approx(10.5 / 20)  # without the worker's report: looks like load
    assert other_share(before, after, own_extra_s=10.0) == pytest.approx(0.5 / 20)


def test_the_worker_warms_the_compiler_without_starting_a_thread_a_fork_would_lose() -> None:
    """warm_first_compile runs tensor operations in the worker: on one thread, so OpenMP starts no pool (a pool's
    threads do not survive a fork, and a child waiting on them hangs), and without tqdm's monitor thread. The
    process's threads before and after are the same, its thread setting is given back, and the function it compiled
    ran (dynamo counted its graph: no error was swallowed)."""
    probe = (
        "import os, torch, torch._dynamo.utils as u\n"
        "from gpt import worker\n"
        "torch.set_num_threads(2)\n"
        "before = sorted(os.listdir('/proc/self/task'))\n"
        "worker.warm_first_compile()\n"
        "after = sorted(os.listdir('/proc/self/task'))\n"
        "print(before == after, u.counters['stats']['unique_graphs'], torch.get_num_threads())\n"
    )
    run = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    same_threads, graphs, threads = run.stdout.split()
    assert same_threads == "True"
    assert int(graphs) >= 1
    assert threads == "2"


def test_a_forked_trial_builds_its_kernels_in_its_own_process(worker: WarmWorker, tmp_path: Path) -> None:
    """A trial forked from the worker compiles with compile_threads = 1: a graph new to the cache is built without
    inductor's compile-worker pool, so the trial starts no sidecar process."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import json, os, sys, torch, torch._inductor.config as c\n"
        f"def fresh(x):\n    return (x * {os.getpid()}.5).sin().sum()\n"
        "value = float(torch.compile(fresh)(torch.randn(8)))\n"
        "children = open(f'/proc/{os.getpid()}/task/{os.getpid()}/children').read().split()\n"
        "json.dump({'threads': c.compile_threads, 'children': children}, open(sys.argv[1], 'w'))\n"
    )
    out = tmp_path / "out.json"
    run = worker.run([str(out)], probe, tmp_path / "log.txt", None, timeout_s=300)
    assert run.returncode == 0, (tmp_path / "log.txt").read_text()[-2000:]
    assert json.loads(out.read_text()) == {"threads": 1, "children": []}


def test_a_forked_trial_past_its_timeout_trains_again_cold_and_the_worker_is_replaced(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trials.launcher import TrainerSettings, run_warm
    from trials.warm_worker import TrialRun

    class HungFork:
        evaluator_sha256 = None
        closed = False

        def run(self, args, train_py, log, memory_limit_bytes, timeout_s) -> TrialRun:
            log.write_text("model_dim=... (hung in its first step)\n")
            return TrialRun(-signal.SIGKILL, True, 1.0)

        def close(self) -> None:
            self.closed = True

    monkeypatch.setenv("BILEVEL_CACHE", env["BILEVEL_CACHE"])
    settings = TrainerSettings(budget_s=2.0, corpus=env["CORPUS"], vocab_size=VOCAB, eval_tokens=EVAL_TOKENS)
    script = copy_train(tmp_path / "e0", **TINY)
    fork = HungFork()
    outcome, trial_cpu = run_warm(settings, script.parent, fork)  # type: ignore[arg-type]
    assert fork.closed
    assert outcome["ok"] and outcome["result"]["val_bpb"] > 0, outcome
    assert outcome["warm_worker"].startswith("timed out") and "trained cold" in outcome["warm_worker"]
    assert "hung in its first step" in (script.parent / "log.forked.txt").read_text()
    assert trial_cpu == 0.0  # the cold training is this process's own child: its rusage counts it
