"""`ablation page`: a results page's marked tables regenerated from the folders they were measured in, the page's
own text untouched, and every malformed marker or missing source a clear error that writes nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ablation import report
from ablation.bbob import BbobSettings, run_benchmark
from ablation.cli import main_page
from ablation.page import PageError, refresh, render

REPO = Path(__file__).resolve().parent.parent
FIGURES = REPO / "docs" / "results" / "ablation-A-local" / "figures.json"


@pytest.fixture
def ablation_dir(tmp_path: Path) -> Path:
    """An ablation folder as `ablation report` leaves it: report/figures.json (a real, committed one)."""
    (tmp_path / "abl" / "report").mkdir(parents=True)
    shutil.copy(FIGURES, tmp_path / "abl" / "report" / "figures.json")
    return tmp_path / "abl"


PAGE = """# Results

Prose the page owns, kept as it is.

<!-- table main abl -->
| stale | table |
|---|---|
| old | figures |
<!-- /table -->

More prose between two tables.

<!-- table cost abl/report -->
<!-- /table -->

<!-- table sources abl -->
anything at all
<!-- /table -->
The end.
"""


def test_marked_tables_are_regenerated_and_the_prose_is_kept(tmp_path, ablation_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    page = tmp_path / "results.md"
    page.write_text(PAGE)
    assert refresh(page, check=True) and page.read_text() == PAGE  # --check writes nothing
    assert refresh(page)
    text = page.read_text()
    analysis = json.loads(FIGURES.read_text())["analysis"]
    assert "\n".join(report.main_table(analysis)) in text
    assert "\n".join(report.cost_table(analysis)) in text
    assert "| old | figures |" not in text and "anything at all" not in text
    for prose in ("# Results", "Prose the page owns, kept as it is.", "More prose between two tables.", "The end."):
        assert prose in text
    assert text.count("<!-- /table -->") == 3
    assert "| A |" in text and "| local |" in text
    assert not refresh(page) and page.read_text() == text  # regenerated again: the same page


def test_a_bbob_table_comes_from_its_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = BbobSettings(functions=[1], instances=[1], seeds=1, budget=8, methods=["random_search", "local_search"])
    run_benchmark(tmp_path / "bbob", settings, log=lambda _: None)
    page = tmp_path / "page.md"
    page.write_text("Intro\n<!-- table bbob bbob -->\n<!-- /table -->\n")
    refresh(page)
    lines = page.read_text().splitlines()
    assert lines[0] == "Intro" and lines[2].startswith("| method | regret, all |")
    assert any(line.startswith("| random_search |") for line in lines)
    assert any(line.startswith("| local_search |") for line in lines)


@pytest.mark.parametrize(
    ("page", "message"),
    [
        ("<!-- table main nowhere -->\n<!-- /table -->\n", "no figures.json"),
        ("<!-- table main abl -->\n| a |\n", "not closed"),
        ("<!-- table main abl -->\n<!-- table cost abl -->\n<!-- /table -->\n", "not closed"),
        ("<!-- table bogus abl -->\n<!-- /table -->\n", "unknown table kind 'bogus'"),
        ("<!-- table main -->\n<!-- /table -->\n", "must read"),
        ("<!-- table bbob abl -->\n<!-- /table -->\n", "no bbob.json"),
    ],
)
def test_a_bad_marker_or_source_is_a_clear_error_and_nothing_is_written(
    tmp_path, ablation_dir, monkeypatch, page, message
):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "results.md"
    path.write_text(page)
    with pytest.raises(PageError, match=message):
        refresh(path)
    assert path.read_text() == page
    assert main_page([str(path)]) == 2 and path.read_text() == page


def test_a_source_that_is_not_an_ablation_report_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "abl").mkdir()
    (tmp_path / "abl" / "figures.json").write_text("[1, 2]")
    with pytest.raises(PageError, match="not an object"):
        render("<!-- table main abl -->\n<!-- /table -->")
    (tmp_path / "abl" / "figures.json").write_text('{"bbob": 1}')
    with pytest.raises(PageError, match="holds no analysis"):
        render("<!-- table main abl -->\n<!-- /table -->")


def test_the_command_checks_then_refreshes(tmp_path, ablation_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    page = tmp_path / "results.md"
    page.write_text(PAGE)
    assert main_page([str(page), "--check"]) == 1
    assert main_page([str(page)]) == 0
    assert main_page([str(page), "--check"]) == 0


def test_the_results_page_is_up_to_date_with_its_folders(monkeypatch):
    """docs/results.md's marked tables are what their committed folders say."""
    monkeypatch.chdir(REPO)
    text = (REPO / "docs" / "results.md").read_text()
    assert render(text) == text
