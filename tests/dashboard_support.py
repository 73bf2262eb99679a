"""Helpers of the dashboard's tests: a real run folder made by the project's own graphs (scripted model, synthetic
executor, Level 2 so mechanisms are injected), a writer that appends experiments the way a running run does, and
the dashboard served by uvicorn on a free loopback port."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn
from support import SyntheticExecutor, change

from dashboard.folders import Served
from dashboard.server import create_app
from graphs.run_config import RunConfig
from graphs.runner import execute
from llm.scripted import ScriptedChatModel

# the synthetic executor crashes a training with WEIGHT_DECAY > 0.4: the run gets a crash to draw
SCRIPT = [
    change("MATRIX_LR", 0.06),
    change("WEIGHT_DECAY", 0.45, "does strong decay help?"),
    change("MATRIX_LR", 0.08),
    change("WARMDOWN_FRAC", 0.7),
    change("MATRIX_LR", 0.1),
]


def make_run(
    run_dir: Path, iterations: int = 9, level: str = "2", mechanism: str | None = "tabu", *, inner_only: bool = False
) -> Path:
    config = RunConfig(
        run_dir=str(run_dir),
        level=level,
        iterations=iterations,
        budget_s=1.0,
        segment=3,
        generate_mode="compose",
        mechanism=mechanism,
    )
    llm = ScriptedChatModel(script=SCRIPT, cycle=True)
    execute(config, llm=llm, executor=SyntheticExecutor(), inner_only=inner_only)
    return run_dir


def served_runs(base: Path, secret: str, with_report: bool = False) -> Path:
    """runs/ under `base` with one Level-2 run and the packed real ablation unpacked beside it (with the report its
    `ablation report` wrote, if asked), and a file holding `secret` outside it."""
    import shutil
    import tarfile

    repo = Path(__file__).resolve().parent.parent
    runs = base / "runs"
    make_run(runs / "run-a")
    with tarfile.open(repo / "docs/results/ablation-real.tar.gz") as tar:
        tar.extractall(runs, filter="data")
    if with_report:
        shutil.copytree(repo / "docs/results/ablation-real", runs / "ablation-real" / "report")
    (base / "secret.txt").write_text(secret)
    return runs


def events(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "trace.jsonl").read_text().splitlines() if line.strip()]


def append_experiment(run_dir: Path, val_bpb: float, status: str = "keep") -> str:
    """Write one more experiment the way the graph does: its folder, then its events at the end of the trace."""
    records = [e for e in events(run_dir) if e.get("kind") == "experiment"]
    last = records[-1]
    iteration = last["iteration"] + 1
    eid = f"e{iteration:04d}"
    folder = run_dir / "experiments" / eid
    folder.mkdir(parents=True)
    (folder / "diff.patch").write_text(f"--- incumbent/train.py\n+++ {eid}/train.py\n@@ -1 +1 @@\n-A = 1\n+A = 2\n")
    outcome = {"ok": True, "wall_seconds": 1.5, "result": {"val_bpb": val_bpb, "training_seconds": 1.0}}
    (folder / "outcome.json").write_text(json.dumps(outcome))
    record = {
        **{k: v for k, v in last.items() if k not in ("event_id", "time")},
        "id": eid,
        "iteration": iteration,
        "val_bpb": val_bpb,
        "status": status,
        "description": "appended by the test",
        "hypothesis": "a live experiment",
        "proposal_source": "llm",
    }
    now = time.time()
    lines = [
        {"kind": "propose", "experiment": eid, "iteration": iteration, "source": "llm", "time": now},
        {"kind": "train_start", "experiment": eid, "time": now},
        {"kind": "experiment", **record, "event_id": f"{eid}:decide", "time": now + 0.1},
    ]
    with open(run_dir / "trace.jsonl", "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(line) + "\n" for line in lines))
    return eid


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(folders: list[Path]) -> Iterator[str]:
    """The dashboard over `folders` on a free loopback port, in a thread; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(
        create_app(Served.of(folders)), host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the dashboard did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
