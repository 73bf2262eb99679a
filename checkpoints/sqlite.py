"""The SqliteSaver of a run folder. Graphs run with durability "sync": each step is on disk before the next starts,
which is what lets a run killed with SIGKILL resume with nothing lost.

A database that cannot be used (corrupt, or missing while the run folder already holds experiments) raises
`CheckpointError` with the command that continues the run from its ledger instead (`checkpoints/rebuild.py`).
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from langgraph.checkpoint.sqlite import SqliteSaver

DURABILITY: Final = "sync"
RESUME_FROM_LEDGER = "python -m graphs.bilevel resume {run_dir} --from-ledger"


class CheckpointError(RuntimeError):
    """The checkpoint database cannot be used; the message says how to continue from the ledger."""


def checkpoint_path(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints" / "graph.sqlite"


@contextmanager
def open_checkpointer(run_dir: Path, *, fresh: bool = False) -> Iterator[SqliteSaver]:
    """The run's saver. Without `fresh`, a missing database in a run folder that already holds experiments is an
    error: starting over would propose new experiments under the ids of recorded ones."""
    path = checkpoint_path(run_dir)
    if not fresh and not path.exists() and _has_experiments(Path(run_dir)):
        raise CheckpointError(_unusable(Path(run_dir), f"{path} is missing, yet the run has recorded experiments"))
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), check_same_thread=False)
    try:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            quick = conn.execute("PRAGMA quick_check").fetchone()
        except sqlite3.DatabaseError as e:
            raise CheckpointError(_unusable(Path(run_dir), f"{path} is corrupt ({e})")) from None
        if quick and quick[0] != "ok":
            raise CheckpointError(_unusable(Path(run_dir), f"{path} is corrupt ({quick[0]})"))
        saver = SqliteSaver(conn)
        saver.setup()
        if not fresh:
            _check_latest(saver, Path(run_dir), path)
        yield saver
    finally:
        conn.close()


def set_aside(run_dir: Path, stamp: str | None = None) -> Path | None:
    """Move the database (with its WAL and shared-memory files) to `set-aside/<stamp>/checkpoints/`; return the
    folder, or None when there was nothing to move. Nothing is deleted: the files stay for inspection."""
    files = sorted(checkpoint_path(run_dir).parent.glob(checkpoint_path(run_dir).name + "*"))
    if not files:
        return None
    folder = Path(run_dir) / "set-aside" / (stamp or time.strftime("%Y%m%d-%H%M%S")) / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    for file in files:
        shutil.move(str(file), folder / file.name)
    return folder


def _check_latest(saver: SqliteSaver, run_dir: Path, path: Path) -> None:
    """Read back the latest checkpoint of every thread: what a resume will load must deserialize; and a database
    with no checkpoint at all (its WAL file lost, say) must not be taken for a new run's."""
    threads = [row[0] for row in saver.conn.execute("SELECT DISTINCT thread_id FROM checkpoints")]
    if not threads and _has_experiments(run_dir):
        raise CheckpointError(_unusable(run_dir, f"{path} holds no checkpoint, yet the run has recorded experiments"))
    for thread in threads:
        try:
            saver.get_tuple({"configurable": {"thread_id": thread}})
        except Exception as e:  # noqa: BLE001 - any failure to read it back means the database cannot be resumed
            why = f"{path} holds an unreadable checkpoint of thread {thread!r} ({type(e).__name__}: {e})"
            raise CheckpointError(_unusable(run_dir, why)) from None


def _has_experiments(run_dir: Path) -> bool:
    results = run_dir / "results.tsv"
    return results.exists() and len(results.read_text(errors="replace").splitlines()) > 1


def _unusable(run_dir: Path, why: str) -> str:
    return (
        f"the checkpoint database cannot be used: {why}. The ledger (results.tsv, trace.jsonl, experiments/) does "
        f"not depend on it and is intact. Continue the run from its ledger with\n"
        f"    {RESUME_FROM_LEDGER.format(run_dir=run_dir)}\n"
        "which sets the database aside (under set-aside/, kept for inspection), rebuilds the inner loop's state from "
        "the experiments recorded in trace.jsonl and starts a fresh outer thread from there."
    )
