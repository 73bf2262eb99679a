"""The warm trial worker: trials forked from a process that imported torch and loaded the data once, each in a
process (group) of its own, with the same exit codes, logs and result JSON as a cold `python train.py`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_gpt_train import EVAL_TOKENS, TINY, VOCAB, copy_train, tiny_corpus_env

ROOT = Path(__file__).resolve().parents[1]


class Worker:
    def __init__(self, env: dict[str, str]) -> None:
        cmd = [sys.executable, "-m", "gpt.worker", "--corpus", env["CORPUS"], "--vocab-size", str(VOCAB)]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT, bufsize=1
        )
        assert self.proc.stdin and self.proc.stdout
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        self.ready = json.loads(self.stdout.readline())

    def submit(self, train_py: Path, *args: str, budget: float = 3.0) -> int:
        argv = ["--budget-s", str(budget), *args]
        request = {
            "train_py": str(train_py),
            "args": argv,
            "log": str(train_py.parent / "log.txt"),
            "cwd": str(train_py.parent),
        }
        self.stdin.write(json.dumps(request) + "\n")
        self.stdin.flush()
        return json.loads(self.stdout.readline())["pid"]

    def wait(self) -> int:
        return json.loads(self.stdout.readline())["returncode"]

    def close(self) -> None:
        self.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return tiny_corpus_env(tmp_path_factory.mktemp("gpt-worker"))


@pytest.fixture()
def worker(env: dict[str, str]):
    w = Worker(env)
    yield w
    w.close()


def _args(env: dict[str, str], result: Path) -> list[str]:
    return ["--corpus", env["CORPUS"], "--vocab-size", str(VOCAB), "--eval-tokens", str(EVAL_TOKENS),
            "--result-json", str(result)]  # fmt: skip


def test_trials_forked_from_the_worker_train_and_report_like_a_cold_start(
    worker: Worker,
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    assert worker.ready["ready"] is True
    results = []
    for i in range(2):
        script = copy_train(tmp_path / f"e{i}", **TINY)
        out = script.parent / "result.json"
        pid = worker.submit(script, *_args(env, out))
        assert pid > 0 and worker.wait() == 0, (script.parent / "log.txt").read_text()[-2000:]
        results.append(json.loads(out.read_text()))
        assert "val_bpb:" in (script.parent / "log.txt").read_text()  # the summary block went to the trial's log
    assert all(r["num_steps"] > 2 and r["val_bpb"] > 0 for r in results)
    assert results[0]["split_sha256"] == results[1]["split_sha256"]
    assert all(r["timing"]["startup_seconds"] < r["total_seconds"] for r in results)


def test_exit_codes_pass_through_and_a_killed_trial_leaves_the_worker_serving(
    worker: Worker,
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    bad = copy_train(tmp_path / "bad", **{**TINY, "TOTAL_BATCH_TOKENS": 1500})  # not a multiple: exit 2
    worker.submit(bad, *_args(env, bad.parent / "result.json"))
    assert worker.wait() == 2 and not (bad.parent / "result.json").exists()
    assert "not a multiple" in (bad.parent / "log.txt").read_text()

    slow = copy_train(tmp_path / "slow", **TINY)
    pid = worker.submit(slow, *_args(env, slow.parent / "result.json"), budget=120.0)
    time.sleep(1.0)
    assert os.getpgid(pid) == pid  # the trial leads its own group: the caller kills everything it started
    os.killpg(pid, signal.SIGKILL)
    assert worker.wait() == -signal.SIGKILL

    again = copy_train(tmp_path / "again", **TINY)
    worker.submit(again, *_args(env, again.parent / "result.json"))
    assert worker.wait() == 0


def test_a_malformed_request_is_answered_and_the_worker_goes_on(
    worker: Worker, env: dict[str, str], tmp_path: Path
) -> None:
    worker.stdin.write("{not json\n")
    worker.stdin.flush()
    assert "not a request" in json.loads(worker.stdout.readline())["error"]
    script = copy_train(tmp_path / "e", **TINY)
    worker.submit(script, *_args(env, script.parent / "result.json"))
    assert worker.wait() == 0


def test_the_worker_works_out_the_compilers_per_process_facts_once_for_every_fork():
    """The vector-ISA probes (ten subprocesses) are done by the worker before it forks, not by each trial."""
    code = (
        "from gpt.worker import preload\n"
        "preload(None, None)\n"
        "from torch._inductor import cpu_vec_isa\n"
        "print(cpu_vec_isa.valid_vec_isa_list.cache_info().currsize)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.split() == ["1"], out.stderr[-2000:]
