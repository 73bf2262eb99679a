"""A run folder recorded by an earlier version of the code (tests/fixtures/resumable_run: Level 2, surrogate
executor, killed in its second segment) resumes to the end with `resume` and is reported with `report`: what a run
records (checkpoint, run.json, mechanism records, built-in sources' hashes) keeps working across code moves."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "resumable_run"


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """The fixture copied, with the two paths it recorded relative to the repository made absolute."""
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    config = json.loads((run / "run.json").read_text())
    config["run_dir"] = str(run)
    config["executor"] = "surrogate:" + str(ROOT / config["executor"].split(":", 1)[1])
    (run / "run.json").write_text(json.dumps(config))
    return run


def test_a_recorded_run_resumes_to_the_end_and_reports(run_dir: Path, monkeypatch) -> None:
    import graphs.runner
    from graphs.cli import main
    from tests.fixtures.make_resumable_run import scripted_model

    @contextmanager
    def scripted(*_args, **_kwargs):
        yield scripted_model(), "scripted model"

    monkeypatch.setattr(graphs.runner, "open_chat_model", scripted)
    before = (run_dir / "trace.jsonl").read_text().splitlines()
    assert '"kind": "run_end"' not in "".join(before) and not (run_dir / "summary.json").exists()

    assert main(["resume", str(run_dir)]) == 0

    events = [json.loads(line) for line in (run_dir / "trace.jsonl").read_text().splitlines()]
    ids = [f"e{i:04d}" for i in range(6)]
    assert Counter(e["id"] for e in events if e["kind"] == "experiment") == Counter(ids)
    assert Counter(e["experiment"] for e in events if e["kind"] == "train_end") == Counter(ids)
    with open(run_dir / "results.tsv") as f:
        assert [r["commit"] for r in csv.DictReader(f, delimiter="\t")] == ids
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["experiments"] == 6 and summary["surrogate"] and summary["stop_reason"]
    resumed = [e["mechanism"].split("@")[0] for e in events[len(before) :] if e["kind"] == "mechanism_call"]
    # e0002 was proposed by centaur before the kill: its segment's graph is rebuilt from centaur's record (its
    # source's sha256 checked), e0002 trained, then bandit composed and run
    assert resumed == ["bandit"] * 3, resumed
    assert events[0]["kind"] == "run_start" and [e["kind"] for e in events].count("run_start") == 2

    report = run_dir / "report.md"
    report.unlink()
    assert main(["report", str(run_dir)]) == 0
    text = report.read_text()
    assert "centaur@" in text and "bandit@" in text
