"""How much of this machine's CPU went to anything other than a training while it ran.

A fixed wall-clock budget measures the machine as well as the configuration: a training that shares its cores
takes fewer optimiser steps and reports a worse val_bpb. The local executor records, for each training it runs on
its own, the share of the machine's CPU time used by everything else — other processes, this process's children
that are still running (a model server answering), and on a virtual machine the time taken by other guests (steal) —
so that a report can flag trainings measured under load and an ablation can wait for a quiet machine first.

Linux only (``/proc/stat``); elsewhere nothing is measured and every function answers None.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PROC_STAT = Path("/proc/stat")
# /proc/stat's "cpu" columns: user nice system idle iowait irq softirq steal (guest time is already in user).
IDLE_COLUMNS = (3, 4)
COUNTED_COLUMNS = 8


@dataclass(frozen=True)
class CpuSnapshot:
    """Cumulative CPU seconds at one moment: the whole machine's busy time, this process's and its reaped children's."""

    at: float
    machine_busy_s: float
    self_s: float
    children_s: float
    cpus: int = 1


def read_proc_stat(text: str) -> tuple[float, int]:
    """Busy CPU seconds of the whole machine since boot and its number of CPUs, from the text of /proc/stat."""
    lines = text.splitlines()
    total = next((line.split()[1:] for line in lines if line.startswith("cpu ")), None)
    if total is None:
        raise ValueError("no aggregate 'cpu' line")
    ticks = [int(v) for v in total[:COUNTED_COLUMNS]]
    busy = sum(v for i, v in enumerate(ticks) if i not in IDLE_COLUMNS)
    cpus = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    return busy / os.sysconf("SC_CLK_TCK"), max(cpus, 1)


def snapshot() -> CpuSnapshot | None:
    try:
        busy, cpus = read_proc_stat(PROC_STAT.read_text())
    except (OSError, ValueError, IndexError):
        return None
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return CpuSnapshot(
        at=time.monotonic(),
        machine_busy_s=busy,
        self_s=own.ru_utime + own.ru_stime,
        children_s=children.ru_utime + children.ru_stime,
        cpus=cpus,
    )


def other_share(
    before: CpuSnapshot | None, after: CpuSnapshot | None, cpus: int | None = None, own_extra_s: float = 0.0
) -> float | None:
    """The share of the machine's CPU capacity between two snapshots that went to neither this process nor the
    children it reaped in between (the training), in [0, 1]; None when either snapshot is missing. `own_extra_s`:
    CPU seconds of ours that another process reaped (a trial forked by a warm worker)."""
    if before is None or after is None or after.at <= before.at:
        return None
    capacity = (after.at - before.at) * (cpus or after.cpus)
    ours = (after.self_s - before.self_s) + (after.children_s - before.children_s) + own_extra_s
    other = (after.machine_busy_s - before.machine_busy_s) - ours
    return round(min(max(other / capacity, 0.0), 1.0), 3)


def measure_other_share(window_s: float = 3.0) -> float | None:
    """The CPU share everything else uses now, over a window of ``window_s`` seconds."""
    before = snapshot()
    time.sleep(window_s)
    return other_share(before, snapshot())


def wait_for_quiet(
    below: float,
    window_s: float = 3.0,
    poll_s: float = 30.0,
    log: Callable[[str], None] = print,
    measure: Callable[[float], float | None] = measure_other_share,
    sleep: Callable[[float], None] = time.sleep,
) -> float | None:
    """Block until everything else uses less than ``below`` of the CPU over a window; the last share measured
    (None where the machine cannot be measured: then it does not wait)."""
    while True:
        share = measure(window_s)
        if share is None or share < below:
            return share
        now = time.strftime("%H:%M:%S")
        log(f"waiting: other processes use {share:.0%} of the CPU (quiet below {below:.0%}) at {now}")
        sleep(poll_s)
