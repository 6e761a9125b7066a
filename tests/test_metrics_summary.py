"""IQM, its bootstrap interval and the normalized entropy of a histogram."""

import math

import numpy as np
import pytest
from scipy.stats import norm, trim_mean

from flowrl.metrics import iqm, iqm_bootstrap_ci, normalized_entropy


def test_normalized_entropy():
    assert normalized_entropy([5, 5, 5, 5]) == pytest.approx(1.0)
    assert normalized_entropy([10, 0, 0, 0]) == 0.0
    assert normalized_entropy([0, 0, 0]) == 0.0
    # Two of four goals, evenly: log 2 / log 4 = 0.5.
    assert normalized_entropy([3, 0, 3, 0]) == pytest.approx(0.5)
    p = np.array([1, 2, 3]) / 6
    assert normalized_entropy([1, 2, 3]) == pytest.approx(-(p * np.log(p)).sum() / math.log(3))
    with pytest.raises(ValueError, match="counts"):
        normalized_entropy([1])
    with pytest.raises(ValueError, match="counts"):
        normalized_entropy([1, -1])


def test_iqm_is_the_interquartile_mean():
    # n = 8: two cut at each end, the middle 50 % [3, 4, 5, 6] averaged.
    assert iqm([1, 2, 3, 4, 5, 6, 7, 100]) == pytest.approx(4.5)
    assert iqm([1, 2, 3, 4, 100]) == pytest.approx(3.0)  # the middle three of five
    # n = 6, not divisible by 4: int(0.25 * 6) = 1 whole value cut at each end (no fractional
    # weights, as scipy.stats.trim_mean and rliable do it); sorted [1, 3, 5, 7, 10, 100] ->
    # [3, 5, 7, 10] -> 25 / 4 = 6.25.
    x = [10, 1, 7, 3, 100, 5]
    assert iqm(x) == pytest.approx(6.25) == trim_mean(x, 0.25)
    # n = 7: int(1.75) = 1 cut at each end; [-50, 1, 2, 4, 8, 16, 900] -> 31 / 5 = 6.2.
    assert iqm([16, 2, 900, 8, -50, 4, 1]) == pytest.approx(6.2)
    # n = 2 or 3: int(0.5), int(0.75) = 0, nothing is cut, the IQM is the mean.
    assert iqm([1, 2, 30]) == pytest.approx(11.0) and iqm([4.0]) == 4.0
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 4, 5, 6, 7, 8, 13):
        x = rng.normal(size=n)
        assert iqm(x) == pytest.approx(trim_mean(x, 0.25))
    with pytest.raises(ValueError, match="no values"):
        iqm([])


def test_iqm_bootstrap_ci_brackets_the_iqm_and_is_reproducible():
    x = [0.2, 0.5, 0.55, 0.6, 0.9]
    low, high = iqm_bootstrap_ci(x)
    assert low <= iqm(x) <= high
    assert (low, high) == iqm_bootstrap_ci(x)
    assert (low, high) != iqm_bootstrap_ci(x, seed=1)  # the seed is what fixes it
    assert iqm_bootstrap_ci([0.7] * 5) == pytest.approx((0.7, 0.7))
    assert iqm_bootstrap_ci([0.7]) == (0.7, 0.7)  # one run: nothing to resample
    assert iqm_bootstrap_ci(x, confidence=0.5) != (low, high)
    with pytest.raises(ValueError, match="no values"):
        iqm_bootstrap_ci([])
    with pytest.raises(ValueError, match="confidence"):
        iqm_bootstrap_ci(x, confidence=95)
    with pytest.raises(ValueError, match="samples"):
        iqm_bootstrap_ci(x, samples=0)


def test_iqm_bootstrap_ci_is_the_percentile_bootstrap_over_runs():
    # Written out directly: resample the runs with replacement, IQM of each resample by
    # scipy, then the 2.5th and 97.5th percentiles of those IQMs.
    x = np.array([3.0, 9.0, 1.0, 4.0, 7.0, 20.0])
    samples, seed = 500, 7
    draws = np.random.default_rng(seed).integers(0, len(x), size=(samples, len(x)))
    stats = [trim_mean(x[run_ids], 0.25) for run_ids in draws]
    expected = np.percentile(stats, [2.5, 97.5])
    assert iqm_bootstrap_ci(x, samples=samples, seed=seed) == pytest.approx(tuple(expected))
    expected_80 = np.percentile(stats, [10, 90])
    assert iqm_bootstrap_ci(x, 0.8, samples, seed) == pytest.approx(tuple(expected_80))


def test_iqm_bootstrap_ci_narrows_with_more_runs_of_the_same_spread():
    def runs(n):  # n evenly spread quantiles of one normal: the same spread for every n
        return 100 + 10 * norm.ppf((np.arange(n) + 0.5) / n)

    widths = [np.subtract(*iqm_bootstrap_ci(runs(n))[::-1]) for n in (4, 16, 64)]
    assert widths[0] > widths[1] > widths[2] > 0
    # The width falls about as 1/sqrt(n): 4x the runs, about half the width.
    assert widths[2] / widths[1] == pytest.approx(0.5, abs=0.15)
