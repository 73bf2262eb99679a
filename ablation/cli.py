"""`python -m graphs.bilevel ablation ...`: run, resume and report an ablation; collect the surrogate's samples.

    python -m graphs.bilevel ablation --groups A,B,C,D,random,tpe --repeats 10 --iterations 30 \\
        --executor surrogate:ablation/data/surrogate_samples.csv --out runs/ablation-surrogate
    python -m graphs.bilevel ablation resume runs/ablation-surrogate
    python -m graphs.bilevel ablation report runs/ablation-surrogate
    python -m graphs.bilevel ablation sample --points 56 --replicates 4 --budget-s 20
    python -m graphs.bilevel ablation fit [--csv ablation/data/surrogate_samples.csv]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import time
from pathlib import Path

from rich.console import Console

from ablation.sampling import DEFAULT_CSV, collect

console = Console()


def main_sample(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m graphs.bilevel ablation sample")
    ap.add_argument("--points", type=int, default=56, help="design points (half global, half around the default)")
    ap.add_argument("--replicates", type=int, default=4, help="the default configuration, trained with other seeds")
    ap.add_argument("--budget-s", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=0, help="seed of the Latin hypercube designs")
    ap.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    ap.add_argument("--work-dir", type=Path, default=Path("runs/surrogate-sampling"))
    ap.add_argument("--memory-gb", type=float, default=6.0, help="a trial allocating more crashes (RLIMIT_DATA)")
    ap.add_argument("--pause-while", metavar="PATTERN", help="before each point, wait while `pgrep -f PATTERN` finds a "
                    "process (e.g. gpt.bench: another engineer's timing benchmark)")  # fmt: skip
    args = ap.parse_args(argv)
    cap = int(args.memory_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, resource.getrlimit(resource.RLIMIT_DATA)[1]))  # children inherit
    rows = collect(args.csv, args.work_dir, args.points, args.replicates, args.budget_s, args.seed,
                   log=console.print, before_each=lambda: wait_while(args.pause_while))  # fmt: skip
    console.print(f"{len(rows)} samples in {args.csv}")
    return 0


def ancestors() -> set[int]:
    """This process and its parents (their command lines hold the pattern itself)."""
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        stat = Path(f"/proc/{pid}/stat").read_text()
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return pids


def matching(pattern: str) -> list[int]:
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in found if int(pid) not in ancestors()]


def wait_while(pattern: str | None, poll_s: float = 60.0) -> None:
    """Block while another process matching ``pattern`` runs (polled every minute)."""
    while pattern and matching(pattern):
        console.print(f"waiting: {pattern!r} is running ({time.strftime('%H:%M:%S')})")
        time.sleep(poll_s)


def main_ablation(argv: list[str]) -> int:
    command = argv[0] if argv else ""
    if command == "sample":
        return main_sample(argv[1:])
    raise SystemExit(f"unknown ablation command {command!r}")
