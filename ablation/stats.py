"""The statistics of the ablation: summaries, bootstrap confidence intervals, paired tests, effect sizes.

Everything takes plain sequences of floats and a seed, so a figure of the report can be recomputed by hand.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as sps
from scipy.optimize import brentq

EXACT_PERMUTATION_MAX_N = 16  # up to 2**16 sign patterns are enumerated; above, a seeded Monte Carlo sample


def mean_sd(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; undefined, NaN, for a single value)."""
    values = np.asarray(xs, dtype=float)
    if values.size == 0:
        return math.nan, math.nan
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else math.nan


def bootstrap_ci(
    xs: Sequence[float], confidence: float = 0.95, n_boot: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean (undefined, NaN, for fewer than two values)."""
    values = np.asarray(xs, dtype=float)
    if values.size < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(n_boot, values.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def permutation_p(diffs: Sequence[float], n_perm: int = 100_000, seed: int = 0) -> float:
    """Two-sided paired (sign-flip) permutation test of mean difference 0: exact for up to 16 pairs."""
    d = np.asarray(diffs, dtype=float)
    if d.size == 0:
        return math.nan
    observed = abs(d.mean())
    if d.size <= EXACT_PERMUTATION_MAX_N:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
    else:
        signs = np.random.default_rng(seed).choice((1.0, -1.0), size=(n_perm, d.size))
    means = np.abs((signs * d).mean(axis=1))
    return float(np.mean(means >= observed - 1e-12))


def wilcoxon_p(diffs: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value (scipy; zero differences dropped); NaN when every difference is 0."""
    d = np.asarray(diffs, dtype=float)
    if d.size == 0 or not np.any(d != 0):
        return math.nan
    return float(sps.wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def cohens_dz(diffs: Sequence[float]) -> float:
    """Paired effect size: the mean difference over the standard deviation of the differences."""
    mean, sd = mean_sd(diffs)
    if len(diffs) < 2:  # one pair has no spread to measure the effect against
        return math.nan
    if sd == 0:  # every pair differs by the same amount
        return math.nan if mean == 0 else math.copysign(math.inf, mean)
    return mean / sd


def holm(pvalues: dict[str, float]) -> dict[str, float]:
    """Holm-Bonferroni adjusted p-values for a family of tests (each group against A): the k-th smallest p times
    the number of tests not yet passed, kept monotone and capped at 1. NaN p-values stay NaN and do not count."""
    finite = sorted((p, name) for name, p in pvalues.items() if not math.isnan(p))
    adjusted: dict[str, float] = {name: math.nan for name, p in pvalues.items() if math.isnan(p)}
    running = 0.0
    for k, (p, name) in enumerate(finite):
        running = max(running, min(1.0, (len(finite) - k) * p))
        adjusted[name] = running
    return adjusted


def share_test(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Two-sided Fisher exact p that two sources' shares of kept improvements (``kept`` of ``total``) are equal,
    treating every experiment as an independent draw, which a sequential search only approximates."""
    table = [[a["kept"], a["total"] - a["kept"]], [b["kept"], b["total"] - b["kept"]]]
    return float(sps.fisher_exact(table).pvalue)


def t_power(dz: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test with ``n`` pairs at standardized effect ``dz`` (noncentral t)."""
    df, nc = n - 1, dz * math.sqrt(n)
    critical = float(sps.t.ppf(1 - alpha / 2, df))
    upper = float(sps.nct.sf(critical, df, nc))
    lower = float(sps.nct.cdf(-critical, df, nc))  # NaN where it underflows: it is then negligible
    return upper + (0.0 if math.isnan(lower) else lower)


def detectable_dz(n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest standardized paired effect the two-sided t-test detects with ``power`` from ``n`` pairs (what a
    null result rules out); NaN below two pairs."""
    if n < 2:
        return math.nan
    high = 1.0
    while t_power(high, n, alpha) < power:
        high *= 2
    return float(brentq(lambda d: t_power(d, n, alpha) - power, 0.0, high, xtol=1e-6))


@dataclass(frozen=True)
class GroupSummary:
    n: int
    mean: float
    sd: float
    ci_low: float
    ci_high: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarise(xs: Sequence[float], seed: int = 0) -> GroupSummary:
    mean, sd = mean_sd(xs)
    low, high = bootstrap_ci(xs, seed=seed)
    return GroupSummary(len(xs), mean, sd, low, high)


@dataclass(frozen=True)
class PairedComparison:
    n: int  # pairs (repeats both groups finished)
    mean_diff: float  # group minus reference: negative is better (lower val_bpb)
    ci_low: float
    ci_high: float
    wilcoxon_p: float
    permutation_p: float
    cohens_dz: float
    detectable_diff: float  # the |mean difference| a two-sided paired t-test finds with 80 % power at this n and sd

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_comparison(group: Sequence[float], reference: Sequence[float], seed: int = 0) -> PairedComparison:
    """The group against the reference on the same repeats (same seeds): differences, CI, tests, effect size."""
    if len(group) != len(reference):
        raise ValueError(f"paired samples differ in length: {len(group)} and {len(reference)}")
    diffs = [a - b for a, b in zip(group, reference, strict=True)]
    low, high = bootstrap_ci(diffs, seed=seed)
    return PairedComparison(
        n=len(diffs),
        mean_diff=mean_sd(diffs)[0],
        ci_low=low,
        ci_high=high,
        wilcoxon_p=wilcoxon_p(diffs),
        permutation_p=permutation_p(diffs, seed=seed),
        cohens_dz=cohens_dz(diffs),
        detectable_diff=detectable_dz(len(diffs)) * mean_sd(diffs)[1],
    )
