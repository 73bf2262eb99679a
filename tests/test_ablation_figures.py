"""ablation.figures: every group paired against the model-free baselines, by hand."""

import pytest

from ablation.figures import PAIRED_BASELINES, against_baselines


def _runs(deltas: list[float | None]) -> list[dict]:
    return [{"repeat": r, "delta": d} for r, d in enumerate(deltas)]


def test_each_group_is_paired_by_seed_against_each_baseline_and_holm_adjusted_together() -> None:
    by_group = {
        "A": _runs([-0.30, -0.20, -0.10, -0.40]),
        "C": _runs([-0.50, -0.40, None, -0.60]),  # repeat 2 unfinished: paired on the other three
        "local": _runs([-0.20, -0.20, -0.20, -0.20]),
        "cmaes": _runs([-0.10, -0.30, -0.20, None]),
    }
    rows = against_baselines(by_group)
    assert [(r["group"], r["baseline"]) for r in rows] == [
        ("A", "local"),
        ("C", "local"),
        ("A", "cmaes"),
        ("C", "cmaes"),
    ]
    by = {(r["group"], r["baseline"]): r for r in rows}
    assert by[("A", "local")]["n"] == 4 and by[("A", "local")]["mean_diff"] == pytest.approx(-0.05)
    assert by[("C", "local")]["n"] == 3 and by[("C", "local")]["mean_diff"] == pytest.approx(-0.3)
    assert by[("A", "cmaes")]["n"] == 3 and by[("A", "cmaes")]["mean_diff"] == pytest.approx((-0.2 + 0.1 + 0.1) / 3)
    assert by[("C", "cmaes")]["n"] == 2 and by[("C", "cmaes")]["mean_diff"] == pytest.approx(-0.25)
    # Holm over the four: the smallest p is multiplied by 4, and no adjusted p is below its raw one
    smallest = min(rows, key=lambda r: r["permutation_p"])
    assert smallest["holm_p"] == pytest.approx(min(1.0, 4 * smallest["permutation_p"]))
    assert all(r["holm_p"] >= r["permutation_p"] for r in rows)


def test_no_baseline_ran_no_rows() -> None:
    assert against_baselines({"A": _runs([-0.1]), "C": _runs([-0.2])}) == []
    assert set(PAIRED_BASELINES) == {"local", "cmaes"}
