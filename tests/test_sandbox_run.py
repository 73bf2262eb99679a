"""Where no sandbox can start, runs that execute LLM-written code refuse to start (naming the package); with
--unsafe-no-sandbox they run, loudly, and say so in run.json, the trace and the report. `mechanisms validate FILE.py`
exits 0 / 1 / 2. The launcher's pieces: the environment allowlist, the bounded parse of a child's lines."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import SyntheticExecutor, change, config

from graphs.cli import main
from graphs.report import write_report
from graphs.run_config import RunConfig
from graphs.runner import check_sandbox, execute, sandbox_needs
from llm.scripted import ScriptedChatModel
from mechanisms import jail
from mechanisms.sandbox import MAX_DEPTH, json_depth
from trials.launcher import TrainerSettings

GOOD = """NAME = "lr_walk"
TARGET = "propose"


def propose(view):
    names = sorted(view.free_names)
    step = view.space.neighbour(view.incumbent, view.rng, [names[view.iteration % len(names)]], 0.1)
    return {"changes": step, "hypothesis": "step", "expected_direction": "down"}
"""


@pytest.fixture
def no_sandbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A machine without bubblewrap."""
    monkeypatch.setattr(jail, "unavailable", lambda: f"bwrap is not installed: {jail.INSTALL_HINT}")
    yield
    jail.set_unsafe(False)


@pytest.mark.parametrize(
    ("overrides", "inner_only", "named"),
    [
        ({"level": "2", "generate_mode": "generate"}, False, "generate mode"),
        ({"level": "1+2", "generate_mode": "generate"}, False, "generate mode"),
        ({"mode": "code"}, True, "--mode code"),
    ],
)
def test_a_run_of_llm_written_code_refuses_to_start_without_a_sandbox(
    tmp_path: Path, no_sandbox: None, overrides: dict[str, Any], inner_only: bool, named: str
) -> None:
    cfg = config(tmp_path, **overrides)
    with pytest.raises(jail.SandboxUnavailable) as info:
        execute(cfg, llm=ScriptedChatModel(script=[change("MATRIX_LR", 0.05)]), executor=SyntheticExecutor(),
                inner_only=inner_only)  # fmt: skip
    message = str(info.value)
    assert named in message and "bubblewrap" in message and "--unsafe-no-sandbox" in message
    assert not (tmp_path / "run" / "run.json").exists()  # refused before anything was written


def test_runs_of_the_project_s_own_code_need_no_sandbox(tmp_path: Path, no_sandbox: None) -> None:
    for overrides in ({"level": "2", "generate_mode": "compose"}, {"level": "1.5"}, {"mode": "params", "level": "1"}):
        cfg = config(tmp_path, **overrides)
        assert sandbox_needs(cfg, inner_only=False) == []
        check_sandbox(cfg, inner_only=False)  # no exception


def test_a_generated_mechanism_file_needs_the_sandbox(tmp_path: Path, no_sandbox: None) -> None:
    path = tmp_path / "mine.py"
    path.write_text(GOOD)
    with pytest.raises(jail.SandboxUnavailable, match="mine.py"):
        check_sandbox(config(tmp_path, level="1", mechanism=str(path)), inner_only=True)


def test_unsafe_no_sandbox_runs_and_is_recorded_everywhere(
    tmp_path: Path, no_sandbox: None, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = config(tmp_path, level="1", mode="code", iterations=1, unsafe_no_sandbox=True)
    assert cfg.trainer().sandbox is False
    execute(cfg, llm=ScriptedChatModel(script=[change("MATRIX_LR", 0.05)], cycle=True),
            executor=SyntheticExecutor(), inner_only=True)  # fmt: skip
    assert "--unsafe-no-sandbox" in capsys.readouterr().err
    run_dir = tmp_path / "run"
    assert json.loads((run_dir / "run.json").read_text())["unsafe_no_sandbox"] is True
    assert RunConfig.load(run_dir).unsafe_no_sandbox is True  # a resume keeps it
    events = [json.loads(line) for line in (run_dir / "trace.jsonl").read_text().splitlines()]
    [unsafe] = [e for e in events if e["kind"] == "unsafe_no_sandbox"]
    assert unsafe["needs"] == ["--mode code (the LLM edits train.py)"] and "bubblewrap" in unsafe["sandbox"]
    assert "Unsafe run" in write_report(run_dir).read_text()


def test_code_mode_trains_in_the_sandbox_and_parameter_mode_does_not(tmp_path: Path) -> None:
    assert config(tmp_path, mode="code").trainer().sandbox is True
    assert config(tmp_path, mode="params").trainer().sandbox is False


def test_mechanisms_validate_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = tmp_path / "good.py", tmp_path / "bad.py"
    good.write_text(GOOD)
    bad.write_text(GOOD.replace("def propose(view):\n", "import typing\n\ndef propose(view):\n    typing.sys\n"))
    assert main(["mechanisms", "validate", str(good), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["stage"] == "done" and report["time_limit_s"] == 60 and report["sandbox"]
    assert main(["mechanisms", "validate", str(bad)]) == 1
    assert "attribute 'sys' is forbidden" in capsys.readouterr().out
    assert main(["mechanisms", "validate", str(tmp_path / "missing.py")]) == 2
    with pytest.raises(SystemExit) as info:
        main(["mechanisms", "validate"])
    assert info.value.code == 2


def test_mechanisms_validate_refuses_where_no_sandbox_can_start(
    tmp_path: Path, no_sandbox: None, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.py"
    good.write_text(GOOD)
    assert main(["mechanisms", "validate", str(good)]) == 1
    assert "no OS sandbox can start" in capsys.readouterr().out


def test_the_environment_is_an_allowlist() -> None:
    base = {"PATH": "/x", "HOME": "/h", "OPENAI_API_KEY": "k", "UNRELATED": "u", "CUDA_VISIBLE_DEVICES": "0"}
    assert jail.passed_env(base) == {"CUDA_VISIBLE_DEVICES": "0"}
    assert jail.passed_env(base, host=True) == {"PATH": "/x", "HOME": "/h", "CUDA_VISIBLE_DEVICES": "0"}
    inside = jail.sandbox_env({"EXTRA": "1"}, base)
    assert inside == {"CUDA_VISIBLE_DEVICES": "0", "PATH": jail.SANDBOX_PATH, "HOME": "/tmp", "TMPDIR": "/tmp",
                      "EXTRA": "1"}  # fmt: skip


def test_json_depth_is_measured_before_parsing() -> None:
    assert json_depth(b'{"a": [1, {"b": "[[[[not nesting]]]]"}]}') == 3
    assert json_depth(b'"\\\\" [') == 1 and json_depth(b"1") == 0
    deep = b"[" * 5000 + b"]" * 5000
    assert json_depth(deep) == 5000 > MAX_DEPTH


def test_the_seccomp_filter_is_well_formed() -> None:
    for processes in (False, True):
        program = jail.seccomp_program(processes)
        if program is None:
            pytest.skip("no filter on this architecture")
        assert len(program) % 8 == 0 and len(program) // 8 < 256  # classic BPF: 8-byte instructions, short jumps


def test_check_sandbox_does_not_leak_unsafe_between_runs(tmp_path: Path) -> None:
    check_sandbox(config(tmp_path, unsafe_no_sandbox=True, level="1"), inner_only=True)
    assert jail.unsafe()
    check_sandbox(config(tmp_path, level="1"), inner_only=True)
    assert not jail.unsafe()


PROBE = """
import json, os, resource, sys
found = {"env": sorted(os.environ), "uid": os.getuid(), "pids": [p for p in os.listdir("/proc") if p.isdigit()],
         "as": resource.getrlimit(resource.RLIMIT_AS)[0], "val_bpb": 1.0}
json.dump(found, open(sys.argv[sys.argv.index("--result-json") + 1], "w"))
"""


def test_the_ray_task_runs_a_trial_like_the_local_executor(monkeypatch: pytest.MonkeyPatch) -> None:
    """The body of the Ray task, called here: the same launcher, so the same sandbox, allowlist and memory limit;
    the node's data cache is filled outside the sandbox first."""
    import trials.ray_executor

    prepared: list[str] = []
    monkeypatch.setattr(trials.ray_executor, "prepare_outside", lambda settings: prepared.append(settings.corpus))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-planted-ray")
    settings = TrainerSettings(budget_s=1.0, kill_after_s=60, sandbox=True, memory_limit_bytes=2 << 30)
    reply = trials.ray_executor.run_trial_here("e0001", PROBE, settings)
    assert reply["outcome"]["ok"], reply
    found = json.loads(reply["result_json"])
    assert found["uid"] == jail.SANDBOX_UID and len(found["pids"]) <= 3 and found["as"] == 2 << 30
    assert "OPENAI_API_KEY" not in found["env"] and "sk-planted-ray" not in reply["log"]
    assert prepared == ["shakespeare"]


def test_an_interpreter_named_by_a_relative_path_starts_in_the_sandbox(tmp_path: Path, monkeypatch) -> None:
    import os
    import subprocess
    import sys

    monkeypatch.chdir(Path(sys.executable).parent.parent.parent)  # the folder that holds .venv
    relative = os.path.relpath(sys.executable)
    assert not os.path.isabs(relative) and os.sep in relative
    box = jail.Jail(env={"PATH": jail.SANDBOX_PATH}, cwd=str(tmp_path), writable=(str(tmp_path),))
    child = jail.spawn([relative, "-S", "-c", "print('inside')"], box, jail.Rlimits(30, None, 1 << 20, 64, 64),
                       stdout=subprocess.PIPE)  # fmt: skip
    out, _ = child.popen.communicate(timeout=60)
    assert child.popen.returncode == 0 and out.strip() == b"inside"
