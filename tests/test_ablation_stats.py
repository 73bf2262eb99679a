"""The ablation's statistics against known values: bootstrap coverage, Wilcoxon and permutation p-values, d_z."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from ablation.stats import (
    bootstrap_ci,
    cohens_dz,
    detectable_dz,
    holm,
    mean_sd,
    paired_comparison,
    permutation_p,
    share_test,
    summarise,
    wilcoxon_p,
)


def test_bootstrap_ci_covers_the_true_mean_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(0)
    samples = [rng.normal(0.0, 1.0, 20) for _ in range(300)]
    covered = [lo <= 0.0 <= hi for lo, hi in (bootstrap_ci(x, n_boot=2000, seed=i) for i, x in enumerate(samples))]
    # the percentile bootstrap under-covers a little at n = 20 (here 0.927 on this fixed set of samples)
    assert 0.90 <= float(np.mean(covered)) <= 0.98


def test_bootstrap_ci_is_seeded_and_brackets_the_mean() -> None:
    x = [0.1, -0.4, 0.3, 0.0, -0.2, 0.5, -0.1]
    low, high = bootstrap_ci(x, seed=3)
    assert (low, high) == bootstrap_ci(x, seed=3)
    assert low < float(np.mean(x)) < high
    assert all(math.isnan(v) for v in bootstrap_ci([2.0]))  # one value: no interval, not a point
    assert all(math.isnan(v) for v in bootstrap_ci([]))


def test_wilcoxon_matches_scipy_and_the_exact_hand_value() -> None:
    assert wilcoxon_p([1, 2, 3, 4, 5]) == pytest.approx(2 / 32)  # every sign positive: 2 of 2**5 rank patterns
    diffs = [0.3, -0.1, 0.25, 0.4, -0.05, 0.2, 0.15, 0.35]
    assert wilcoxon_p(diffs) == pytest.approx(sps.wilcoxon(diffs).pvalue)
    assert math.isnan(wilcoxon_p([0.0, 0.0]))


def test_permutation_p_exact_values() -> None:
    assert permutation_p([1, 2, 3]) == pytest.approx(2 / 8)  # only all-plus and all-minus reach |mean| 2
    assert permutation_p([1, -1]) == 1.0
    assert permutation_p([1, 1, 1, 1, 1, 1]) == pytest.approx(2 / 64)
    shifted = np.random.default_rng(1).normal(1.0, 0.5, 30)  # Monte Carlo above 16 pairs
    assert permutation_p(shifted) < 1e-3
    assert permutation_p(shifted, seed=2) < 1e-3


def test_effect_size_and_summaries() -> None:
    assert cohens_dz([1, 2, 3]) == pytest.approx(2.0)  # mean 2, sd 1
    assert cohens_dz([1, 1]) == math.inf and math.isnan(cohens_dz([0, 0]))
    assert math.isnan(cohens_dz([0.5]))  # one pair: no spread to measure the effect against
    assert mean_sd([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
    assert mean_sd([2.0])[0] == 2.0 and math.isnan(mean_sd([2.0])[1])
    s = summarise([-0.01, -0.02, -0.03])
    assert s.n == 3 and s.mean == pytest.approx(-0.02) and s.ci_low <= s.mean <= s.ci_high


def test_paired_comparison() -> None:
    group, reference = [-0.05, -0.04, -0.06, -0.03], [-0.01, -0.02, -0.01, -0.02]
    c = paired_comparison(group, reference)
    assert c.n == 4 and c.mean_diff == pytest.approx(-0.03)
    assert c.permutation_p == pytest.approx(2 / 16) and c.wilcoxon_p == pytest.approx(2 / 16)
    assert c.cohens_dz == pytest.approx(-0.03 / float(np.std([-0.04, -0.02, -0.05, -0.01], ddof=1)))
    assert c.detectable_diff == pytest.approx(detectable_dz(4) * abs(c.mean_diff / c.cohens_dz))
    with pytest.raises(ValueError, match="differ in length"):
        paired_comparison([1.0], [1.0, 2.0])


def test_holm_adjustment_by_hand() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone: 0.02, 0.03, 0.06, 0.06
    adjusted = holm({"B": 0.01, "C": 0.04, "D": 0.03, "tpe": 0.005, "random": math.nan})
    assert adjusted == pytest.approx({"tpe": 0.02, "B": 0.03, "D": 0.06, "C": 0.06, "random": math.nan}, nan_ok=True)
    assert holm({"B": 0.6, "C": 0.7}) == {"B": 1.0, "C": 1.0}  # capped at 1
    assert holm({}) == {}


def test_detectable_effect_matches_simulated_power() -> None:
    assert detectable_dz(20) == pytest.approx(0.660, abs=1e-3)  # the textbook value (paired t, alpha .05, power .8)
    assert math.isnan(detectable_dz(1)) and detectable_dz(3) > detectable_dz(10) > detectable_dz(50)
    # at the returned effect, a two-sided paired t-test on simulated pairs rejects about 80 % of the time
    dz, n = detectable_dz(10), 10
    rng = np.random.default_rng(1)
    diffs = rng.normal(dz, 1.0, size=(4000, n))
    rejected = sps.ttest_1samp(diffs, 0.0, axis=1).pvalue < 0.05
    assert 0.77 <= float(rejected.mean()) <= 0.83


def test_share_test_is_fishers_exact_test() -> None:
    llm, fallback = {"kept": 10, "total": 25}, {"kept": 13, "total": 125}
    assert share_test(llm, fallback) == pytest.approx(sps.fisher_exact([[10, 15], [13, 112]]).pvalue)
    assert share_test({"kept": 1, "total": 4}, {"kept": 1, "total": 4}) == pytest.approx(1.0)
    assert share_test({"kept": 3, "total": 4}, {"kept": 1, "total": 4}) == pytest.approx(34 / 70)  # the tea tasting
