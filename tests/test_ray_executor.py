"""The Ray executor against a real Ray cluster that this module starts on 127.0.0.1 (2 CPU slots) and stops at the end.

The trials run a fake train.py: gpt/train.py's hyperparameter block, then a body that logs its attempt, sleeps,
and writes a valid result (val_bpb from the constants; WEIGHT_DECAY > 0.4 exits 3, diverged). Ray must start here:
when it cannot, the tests fail with the reason (they are never skipped).

    python tests/test_ray_executor.py drive RUN_DIR ADDRESS ATTEMPTS   (the driver that a test kills with SIGKILL)
"""

from __future__ import annotations

import csv
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from support import change, config, synthetic_bpb  # noqa: E402

from mechanisms.space import SearchSpace  # noqa: E402
from trials.candidate import rewrite_constants  # noqa: E402
from trials.launcher import (  # noqa: E402
    TRAIN_PATH,  # noqa: E402
    LocalExecutor,
    TrainerSettings,
    Trial,
)

pytestmark = pytest.mark.slow
RAY = Path(sys.executable).parent / "ray" if (Path(sys.executable).parent / "ray").exists() else Path("ray")
BEGIN, END = "# ---- hyperparameters: the inner loop edits this block ----", "# ---- end of hyperparameters ----"
SCRIPT = [
    change("MATRIX_LR", 0.08),
    change("MATRIX_LR", 0.2),
    change("WEIGHT_DECAY", 0.45),
    change("WARMDOWN_FRAC", 0.7),
]

FAKE_BODY = """
import hashlib, json, math, os, sys, time
from pathlib import Path

started = time.time()
attempts = os.environ.get("FAKE_ATTEMPTS", ATTEMPTS)
if attempts:  # one line per attempt: pid, parent pid (the Ray worker or the driver), experiment id, start time
    with open(attempts, "a") as f:
        f.write(f"{os.getpid()} {os.getppid()} {Path.cwd().name.split('-')[0]} {started}\\n")
time.sleep(float(os.environ.get("FAKE_SLEEP_S", SLEEP_S)) * DEPTH / 4)
if WEIGHT_DECAY > 0.4:
    print("loss nan")
    sys.exit(3)
bpb = round(1.9 + 0.3 * math.log(MATRIX_LR / 0.08) ** 2 + 0.2 * (WARMDOWN_FRAC - 0.7) ** 2 + 0.01 * abs(DEPTH - 4), 6)
evaluator = Path(os.environ["PYTHONPATH"].split(os.pathsep)[0]) / "gpt" / "evaluate.py"
budget = float(sys.argv[sys.argv.index("--budget-s") + 1])
result = {
    "val_bpb": bpb,
    "training_seconds": min(time.time() - started, budget),
    "evaluator_sha256": hashlib.sha256(evaluator.read_bytes()).hexdigest(),
    "split_sha256": "f" * 64,
    "peak_memory_mb": 512.0,
    "num_steps": 10,
    "finished": time.time(),
}
print("---")
print(f"val_bpb: {bpb:.6f}")
Path(sys.argv[sys.argv.index("--result-json") + 1]).write_text(json.dumps(result))
"""


def fake_train(attempts: Path | None = None, sleep_s: float = 0.1, **params: Any) -> str:
    """gpt/train.py's hyperparameter block (with `params` set) and the fake body."""
    source = TRAIN_PATH.read_text()
    block = source[source.index(BEGIN) : source.index(END) + len(END)]
    text = f"{block}\nATTEMPTS = {str(attempts or '')!r}\nSLEEP_S = {sleep_s!r}\n{FAKE_BODY}"
    return rewrite_constants(text, params) if params else text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A Ray head on 127.0.0.1 with 2 CPUs and its own token, temp folder and ports; its address."""
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's socket paths live under it
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import ray
    from ray._private.authentication_test_utils import reset_auth_token_state

    reset_auth_token_state()  # Ray caches the authentication settings: make this process read the ones above
    port = free_port()
    ports = (
        "--dashboard-port",
        "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port",
        "--runtime-env-agent-port",
        "--metrics-export-port",
    )
    cmd = [
        str(RAY),
        "start",
        "--head",
        "--block",
        "--node-ip-address",
        "127.0.0.1",
        "--port",
        str(port),
        "--num-cpus",
        "2",
        "--num-gpus",
        "0",
        "--include-dashboard",
        "false",
        "--disable-usage-stats",
        "--temp-dir",
        str(temp),
    ]
    for flag in ports:
        cmd += [flag, str(free_port())]
    with open(temp / "ray-start.log", "w") as log:
        head = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while "Ray runtime started" not in (temp / "ray-start.log").read_text():
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"Ray did not start here ({' '.join(cmd)}):\n{(temp / 'ray-start.log').read_text()[-3000:]}"
                )
            time.sleep(0.2)
        yield address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        head.terminate()  # SIGTERM to `ray start --block`, then SIGKILL to what is left of its process group
        try:
            head.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)  # whatever is left of this cluster: its own process group
        except ProcessLookupError:
            pass
        head.wait()
        shutil.rmtree(temp, ignore_errors=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        reset_auth_token_state()


def test_the_command_line_chooses_the_executor(tmp_path):
    import argparse

    from graphs.cli import add_run_flags, config_from
    from graphs.run_config import RunConfig
    from graphs.runner import executor_for
    from trials.ray_executor import RayExecutor

    ap = argparse.ArgumentParser()
    add_run_flags(ap, bilevel=True)
    flags = ["--run-dir", str(tmp_path / "run"), "--executor", "ray", "--ray-address", "auto", "--parallel", "3"]
    cfg = config_from(ap.parse_args(flags), bilevel=True)
    cfg.save()
    cfg = RunConfig.load(tmp_path / "run")  # what `resume` reads back
    assert (cfg.executor, cfg.ray_address, cfg.parallel) == ("ray", "auto", 3)
    ray_executor = executor_for(cfg)
    assert isinstance(ray_executor, RayExecutor) and ray_executor.address == "auto" and ray_executor.parallel == 3
    local = executor_for(config_from(ap.parse_args(["--run-dir", str(tmp_path / "other")]), bilevel=True))
    assert isinstance(local, LocalExecutor) and local.parallel == 1


def make_trials(root: Path, sources: list[str]) -> list[Trial]:
    trials = []
    for i, source in enumerate(sources):
        folder = root / f"e{i:04d}"
        folder.mkdir(parents=True)
        (folder / "train.py").write_text(source)
        trials.append(Trial(f"e{i:04d}", folder))
    return trials


def attempts_of(path: Path) -> list[tuple[int, int, str, float]]:
    lines = path.read_text().splitlines() if path.exists() else []
    return [(int(p), int(pp), e, float(t)) for p, pp, e, t in (line.split() for line in lines)]


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_batch_runs_in_parallel_and_comes_back_in_trial_order(cluster, tmp_path):
    from trials.ray_executor import RayExecutor

    attempts = tmp_path / "attempts.txt"
    sources = [fake_train(DEPTH=16), fake_train(DEPTH=2), fake_train(WEIGHT_DECAY=0.45), fake_train(DEPTH=3)]
    trials = make_trials(tmp_path / "experiments", sources)
    (trials[0].folder / "result.json").write_text('{"val_bpb": 0.1}')  # a stale result: must not be read
    settings = TrainerSettings(budget_s=5.0, extra_env={"FAKE_ATTEMPTS": str(attempts), "FAKE_SLEEP_S": "1.0"})
    outcomes = RayExecutor(cluster).run_batch(trials, settings)

    assert [o["ok"] for o in outcomes] == [True, True, False, True]
    expected = [synthetic_bpb(SearchSpace.from_train_source(source).defaults()) for source in sources]
    assert [o["result"]["val_bpb"] for o in outcomes if o["ok"]] == [expected[0], expected[1], expected[3]]
    assert (
        outcomes[2]["returncode"] == 3 and "diverged" in outcomes[2]["error"] and "loss nan" in outcomes[2]["log_tail"]
    )
    for trial, outcome in zip(trials, outcomes, strict=True):
        assert ("val_bpb" if outcome["ok"] else "loss nan") in (trial.folder / "log.txt").read_text()
        if outcome["ok"]:  # the files came back into the experiment folder on the driver
            assert json.loads((trial.folder / "result.json").read_text()) == outcome["result"]
        else:
            assert not (trial.folder / "result.json").exists()
    # e0000 (sleeps 4 s) ran beside the short ones and finished last, yet its outcome is first
    starts = {e: t for _, _, e, t in attempts_of(attempts)}
    assert sorted(starts) == ["e0000", "e0001", "e0002", "e0003"]
    assert starts["e0001"] < outcomes[0]["result"]["finished"]
    assert outcomes[1]["result"]["finished"] < outcomes[0]["result"]["finished"]
    workers = {pp for _, pp, _, _ in attempts_of(attempts)}
    assert os.getpid() not in workers and len(workers) >= 2  # two Ray workers, not this process


@pytest.mark.parametrize("kills", [1, 2])
def test_a_killed_worker_is_retried_once_then_the_trial_is_a_crash(cluster, tmp_path, kills):
    from trials.ray_executor import RayExecutor

    attempts = tmp_path / "attempts.txt"
    trials = make_trials(tmp_path / "experiments", [fake_train(attempts, sleep_s=3.0)])
    killed: list[tuple[int, int]] = []

    def kill_workers() -> None:  # SIGKILL the Ray worker running each of the first `kills` attempts
        deadline = time.monotonic() + 60
        while len(killed) < kills and time.monotonic() < deadline:
            for pid, worker, _, _ in attempts_of(attempts)[len(killed) :]:
                os.kill(worker, signal.SIGKILL)
                killed.append((pid, worker))
            time.sleep(0.05)

    killer = threading.Thread(target=kill_workers, daemon=True)
    killer.start()
    outcome = RayExecutor(cluster, max_retries=1).run(trials[0], TrainerSettings(budget_s=5.0))
    killer.join(timeout=5)

    assert len(killed) == kills
    runs = attempts_of(attempts)
    if kills == 1:  # the retry ran on another worker and succeeded
        assert outcome["ok"] and len(runs) == 2, outcome
        assert outcome["result"]["val_bpb"] > 0 and (trials[0].folder / "result.json").exists()
    else:  # the retry's worker died too: no third attempt, a crash
        assert not outcome["ok"] and len(runs) == 2, outcome
        assert outcome["returncode"] is None and "ray worker lost" in outcome["error"]
        assert "ran 2 time(s)" in outcome["error"] and "WorkerCrashedError" in outcome["error"]
        assert "ray worker lost" in (trials[0].folder / "log.txt").read_text()
    for pid, _ in killed:  # the killed workers' trials died with them: no orphan keeps training
        wait_until(lambda pid=pid: not alive(pid), 10, f"the orphaned trial {pid} to die")


def test_the_hard_timeout_is_enforced_on_the_worker(cluster, tmp_path):
    from trials.ray_executor import RayExecutor

    attempts = tmp_path / "attempts.txt"
    trials = make_trials(tmp_path / "experiments", [fake_train(attempts, sleep_s=30.0)])
    start = time.monotonic()
    outcome = RayExecutor(cluster).run(trials[0], TrainerSettings(budget_s=1.0, kill_after_s=1.0))
    assert time.monotonic() - start < 20
    assert not outcome["ok"] and "killed after the 1 s timeout" in outcome["error"], outcome
    assert len(attempts_of(attempts)) == 1  # a timeout is the trial's outcome, not a lost worker: no retry
    wait_until(lambda: not alive(attempts_of(attempts)[0][0]), 10, "the timed-out trial to be killed")


def test_warm_trials_fork_from_a_worker_the_ray_worker_keeps(cluster, tmp_path):
    from trials.ray_executor import RayExecutor

    attempts = tmp_path / "attempts.txt"
    trials = make_trials(tmp_path / "experiments", [fake_train(attempts, DEPTH=d) for d in (2, 3)])
    executor = RayExecutor(cluster, warm=True)
    outcomes = [executor.run(trial, TrainerSettings(budget_s=5.0)) for trial in trials]
    assert all(o["ok"] and o["warm_worker"] == "used" for o in outcomes), outcomes
    parents = {parent for _, parent, _, _ in attempts_of(attempts)}
    for parent in parents:  # the trainer's parent is a warm worker (kept alive by its Ray worker), not a Ray worker
        assert "gpt.worker" in Path(f"/proc/{parent}/cmdline").read_bytes().decode(errors="replace")


def run_with(executor: Any, run_dir: Path, tmp_path: Path, batch: int) -> dict[str, Any]:
    from graphs.runner import execute
    from llm.scripted import ScriptedChatModel

    run_dir.mkdir(parents=True)
    (run_dir / "base_train.py").write_text(fake_train())
    cfg = config(tmp_path, run_dir=str(run_dir), iterations=4, batch=batch)
    return execute(cfg, llm=ScriptedChatModel(script=list(SCRIPT)), executor=executor, inner_only=True)


@pytest.mark.parametrize("batch", [1, 2])
def test_the_ledger_is_the_same_as_with_the_local_executor(cluster, tmp_path, batch):
    from trials.ray_executor import RayExecutor

    local = run_with(LocalExecutor(parallel=batch), tmp_path / "local", tmp_path, batch)
    remote = run_with(RayExecutor(cluster), tmp_path / "ray", tmp_path, batch)

    def view(final: dict[str, Any]) -> list[tuple[Any, ...]]:
        return [(e["id"], e["status"], e["val_bpb"], e["params"]) for e in final["experiments"]]

    assert [e[0] for e in view(local)] == [f"e{i:04d}" for i in range(5)]
    assert "crash" in [e[1] for e in view(local)] and "keep" in [e[1] for e in view(local)[1:]]
    assert view(remote) == view(local)
    assert remote["best_id"] == local["best_id"] and remote["best_bpb"] == local["best_bpb"]
    rows = {}
    for name in ("local", "ray"):
        with open(tmp_path / name / "results.tsv") as f:
            rows[name] = list(csv.DictReader(f, delimiter="\t"))
    assert rows["ray"] == rows["local"] and [r["commit"] for r in rows["ray"]] == [f"e{i:04d}" for i in range(5)]
    for i in range(5):
        folder = tmp_path / "ray" / "experiments" / f"e{i:04d}"
        assert (folder / "log.txt").exists() and (folder / "outcome.json").exists()


def drive(run_dir: Path, address: str, attempts: Path) -> None:
    """A run with batches of 2 on the Ray executor, as its own process (a test kills it with SIGKILL and resumes it).
    The first batch: e0001 (DEPTH 2, 0.5 s) and e0002 (DEPTH 8, 2 s)."""
    from graphs.run_config import RunConfig
    from graphs.runner import execute
    from llm.scripted import ScriptedChatModel
    from trials.ray_executor import RayExecutor

    if (run_dir / "run.json").exists():
        cfg = RunConfig.load(run_dir)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "base_train.py").write_text(fake_train(attempts, sleep_s=1.0))
        cfg = RunConfig(run_dir=str(run_dir), level="1", iterations=4, budget_s=5.0, segment=5, batch=2)
    script = [change("DEPTH", 2), change("DEPTH", 8), change("MATRIX_LR", 0.05), change("MATRIX_LR", 0.06)]
    execute(cfg, llm=ScriptedChatModel(script=script, cycle=True), executor=RayExecutor(address), inner_only=True)


def test_a_killed_driver_resumes_without_rerunning_finished_trials(cluster, tmp_path):
    run_dir, attempts = tmp_path / "run", tmp_path / "attempts.txt"
    landed = run_dir / "experiments" / "e0001" / "executor_outcome.json"
    cmd = [sys.executable, __file__, "drive", str(run_dir), cluster, str(attempts)]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:  # kill the driver mid-batch: e0001 has come back, e0002 is still training
        started = lambda: any(e == "e0002" for _, _, e, _ in attempts_of(attempts))  # noqa: E731
        wait_until(lambda: landed.exists() and started(), 60, "e0001 to come back while e0002 trains")
    finally:
        first.kill()
        _, err = first.communicate()
    assert first.returncode == -signal.SIGKILL, err.decode()[-3000:]
    assert not (run_dir / "experiments" / "e0001" / "outcome.json").exists()  # the train node never saw it
    assert not (run_dir / "experiments" / "e0002" / "executor_outcome.json").exists()
    orphan = next(pid for pid, _, e, _ in attempts_of(attempts) if e == "e0002")
    wait_until(lambda: not alive(orphan), 20, "Ray to stop the dead driver's trial")

    resumed = subprocess.run(cmd, capture_output=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]
    runs = Counter(e for _, _, e, _ in attempts_of(attempts))
    assert runs == {"e0000": 1, "e0001": 1, "e0002": 2, "e0003": 1, "e0004": 1}  # only the unfinished one again
    events = [json.loads(line) for line in (run_dir / "trace.jsonl").read_text().splitlines() if line.strip()]
    ids = [f"e{i:04d}" for i in range(5)]
    assert sorted(Counter(e["experiment"] for e in events if e["kind"] == "train_end").items()) == [(i, 1) for i in ids]
    with open(run_dir / "results.tsv") as f:
        assert [r["commit"] for r in csv.DictReader(f, delimiter="\t")] == ids
    assert json.loads((run_dir / "summary.json").read_text())["experiments"] == 5


if __name__ == "__main__" and sys.argv[1:2] == ["drive"]:
    drive(Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4]))
