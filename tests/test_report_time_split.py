"""The run report's split of each training's wall time into phases, from the experiment records."""

from __future__ import annotations

from graphs.report import time_split_lines


def _record(training: float, wall: float) -> dict:
    timing = {
        "startup_seconds": 3.0,
        "warmup_seconds": 5.0,
        "training_seconds": training,
        "setup_and_overhead_seconds": 0.5,
        "eval_seconds": 2.0,
    }
    return {"status": "keep", "seconds": wall, "timing": timing}


def test_the_split_gives_medians_per_phase_and_the_fixed_cost_against_the_budget() -> None:
    lines = time_split_lines([_record(20.0, 31.0), _record(19.0, 30.0), _record(20.0, 32.0), {"status": "crash"}])
    text = "\n".join(lines)
    assert "medians over 3 trainings" in text
    assert "| training (the budget) | 20.00 |" in text and "| evaluation | 2.00 |" in text
    assert "Fixed cost per trial (wall − training): 11.00 s, 55% of the training." in text


def test_records_without_a_split_give_no_section() -> None:
    assert time_split_lines([{"status": "keep", "seconds": 3.0}]) == []
