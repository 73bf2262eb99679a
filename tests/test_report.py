"""The run report is regenerated from the ledger alone (trace.jsonl), and says which mechanism ran how often."""

from __future__ import annotations

import shutil

from support import SyntheticExecutor, change, config

from checkpoints.run_folder import Ledger
from graphs.report import proposal_stats, write_report
from graphs.runner import execute
from llm.scripted import ScriptedChatModel


def test_report_from_the_ledger_alone(tmp_path):
    script = [
        "no tool call",
        change("MATRIX_LR", 0.08),
        change("MATRIX_LR", 0.08),
        change("DEPTH", 5),
        change("WARMDOWN_FRAC", 0.7),
    ]
    execute(
        config(tmp_path, iterations=3),
        llm=ScriptedChatModel(script=script),
        executor=SyntheticExecutor(),
        inner_only=True,
    )
    run_dir = tmp_path / "run"
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(run_dir / "trace.jsonl", copy / "trace.jsonl")  # nothing else: no state, no checkpoint
    text = write_report(copy).read_text()
    assert "experiments: 4 (kept 2, crashes 0)" in text
    assert "| llm_greedy@" in text and "| builtin | 3 | 0 | 3 |" in text
    assert (copy / "progress.png").stat().st_size > 10_000 and (copy / "mechanisms.png").exists()
    stats = proposal_stats(Ledger(copy))
    assert stats["outcome"] == {"repaired": 2, "valid at once": 1}
    assert stats["rejections"] == {"no tool call": 1, "no-op": 1}
