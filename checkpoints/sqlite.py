"""The SqliteSaver of a run folder. Graphs run with durability "sync": each step is on disk before the next starts,
which is what lets a run killed with SIGKILL resume with nothing lost."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from langgraph.checkpoint.sqlite import SqliteSaver

DURABILITY = "sync"


class CheckpointError(RuntimeError):
    """The checkpoint database cannot be used; the message says how to continue from the ledger."""


def checkpoint_path(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints" / "graph.sqlite"


@contextmanager
def open_checkpointer(run_dir: Path) -> Iterator[SqliteSaver]:
    path = checkpoint_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), check_same_thread=False)
    try:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            quick = conn.execute("PRAGMA quick_check").fetchone()
        except sqlite3.DatabaseError as e:
            raise CheckpointError(_unusable(path, str(e))) from None
        if quick and quick[0] != "ok":
            raise CheckpointError(_unusable(path, str(quick[0])))
        saver = SqliteSaver(conn)
        saver.setup()
        yield saver
    finally:
        conn.close()


def _unusable(path: Path, why: str) -> str:
    return (
        f"the checkpoint database {path} is corrupt ({why}). The ledger (results.tsv, trace.jsonl, experiments/) "
        "does not depend on it and is intact; move the database aside to keep it for inspection."
    )
