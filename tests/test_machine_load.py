"""The machine's other CPU use during a training: /proc/stat arithmetic, the share recorded by the real local
executor (a competing process is counted, the training itself is not), and waiting for a quiet machine."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trials import launcher, machine_load  # noqa: E402
from trials.launcher import LocalExecutor, TrainerSettings, Trial, run_warm  # noqa: E402
from trials.machine_load import CpuSnapshot, other_share, read_proc_stat, wait_for_quiet  # noqa: E402

linux_only = pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs /proc/stat")
PROC_STAT = """cpu  1000 100 300 5000 200 10 20 70 40 0
cpu0 500 50 150 2500 100 5 10 35 20 0
cpu1 500 50 150 2500 100 5 10 35 20 0
intr 12345
ctxt 999
"""
# A stand-in training: burns one core for the given seconds, then writes a result.
BURN = """
import json, sys, time
end = time.monotonic() + {seconds}
while time.monotonic() < end:
    pass
json.dump({{"val_bpb": 2.0}}, open(sys.argv[sys.argv.index("--result-json") + 1], "w"))
"""
SPIN = "import time\nend = time.monotonic() + 30\nwhile time.monotonic() < end:\n    pass\n"


def cpus() -> int:
    snap = machine_load.snapshot()
    assert snap is not None
    return snap.cpus


def test_proc_stat_busy_time_leaves_out_idle_and_iowait_and_counts_steal() -> None:
    busy, cpus = read_proc_stat(PROC_STAT)
    ticks = os.sysconf("SC_CLK_TCK")
    assert busy == pytest.approx((1000 + 100 + 300 + 10 + 20 + 70) / ticks)  # guest (40) is inside user already
    assert cpus == 2
    with pytest.raises(ValueError):
        read_proc_stat("intr 1\n")


def test_the_share_is_what_neither_this_process_nor_its_training_used() -> None:
    before = CpuSnapshot(at=100.0, machine_busy_s=50.0, self_s=1.0, children_s=3.0)
    after = CpuSnapshot(at=110.0, machine_busy_s=62.0, self_s=1.5, children_s=12.5)  # 20 s of capacity on 2 CPUs
    assert other_share(before, after, cpus=2) == pytest.approx(2.0 / 20.0)  # 12 busy - 0.5 own - 9.5 training
    idle = CpuSnapshot(at=110.0, machine_busy_s=59.0, self_s=1.5, children_s=12.5)  # counters out of step
    assert other_share(before, idle, cpus=2) == 0.0
    assert other_share(None, after) is None and other_share(before, None) is None
    assert other_share(after, before, cpus=2) is None  # no time passed forwards


def _train(folder: Path, executor: LocalExecutor | None = None) -> dict:
    folder.mkdir()
    (folder / "train.py").write_text(BURN.format(seconds=1.5))
    return (executor or LocalExecutor()).run(Trial(folder.name, folder), TrainerSettings(budget_s=1.0, kill_after_s=30))


@linux_only
@pytest.mark.parametrize("warm", [False, True])
def test_the_training_itself_is_not_counted(tmp_path, monkeypatch: pytest.MonkeyPatch, warm: bool) -> None:
    """On a machine where nothing but this process and its training runs (/proc/stat reports exactly their CPU
    time, whatever else this machine is doing), the share is zero: the training's core-second is its own, also when
    a warm worker, not this process, reaps it."""
    ours: list[float] = []

    def only_us(_text: str) -> tuple[float, int]:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        busy = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime + sum(ours)
        return busy, 2

    monkeypatch.setattr(machine_load, "read_proc_stat", only_us)
    executor = LocalExecutor(warm=warm)
    if warm:  # the worker's trials are its children: what it reports is all /proc/stat would add
        original = run_warm

        def counted(settings, folder, worker):
            outcome, cpu = original(settings, folder, worker)
            ours.append(cpu)
            return outcome, cpu

        monkeypatch.setattr(launcher, "run_warm", counted)
    try:
        alone = _train(tmp_path / "alone", executor)
    finally:
        executor.close()
    assert alone["ok"], alone
    assert alone["other_cpu_share"] == pytest.approx(0.0, abs=0.02)
    assert (alone.get("warm_worker") == "used") is warm


@linux_only
def test_a_competing_process_is_counted(tmp_path) -> None:
    spinner = subprocess.Popen([sys.executable, "-c", SPIN])
    try:
        beside = _train(tmp_path / "beside")
    finally:
        spinner.kill()
        spinner.wait()
    assert beside["other_cpu_share"] > 0.5 / cpus(), beside


@linux_only
def test_parallel_trials_do_not_record_a_share(tmp_path) -> None:
    folder = tmp_path / "e0000"
    folder.mkdir()
    (folder / "train.py").write_text(BURN.format(seconds=0.1))
    outcome = LocalExecutor(parallel=2).run(Trial("e0000", folder), TrainerSettings(budget_s=1.0, kill_after_s=30))
    assert outcome["ok"] and "other_cpu_share" not in outcome  # trials beside each other load the machine by design


def test_waiting_for_a_quiet_machine() -> None:
    measured, slept, said = iter([0.6, 0.3, 0.04]), [], []
    share = wait_for_quiet(0.1, measure=lambda _w: next(measured), sleep=slept.append, log=said.append, poll_s=7)
    assert share == 0.04 and slept == [7, 7] and len(said) == 2 and "60%" in said[0]
    assert wait_for_quiet(0.1, measure=lambda _w: None, sleep=slept.append, log=said.append) is None  # unmeasurable
    assert len(slept) == 2


@linux_only
def test_a_busy_machine_is_measured_busy() -> None:
    spinner = subprocess.Popen([sys.executable, "-c", SPIN])
    try:
        share = machine_load.measure_other_share(1.0)
    finally:
        spinner.kill()
        spinner.wait()
    assert share is not None and share > 0.5 / cpus()
