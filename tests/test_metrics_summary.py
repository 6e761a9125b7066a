"""IQM, its bootstrap interval and the normalized entropy of a histogram."""

import math

import numpy as np
import pytest
from scipy.stats import trim_mean

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
    assert iqm([1, 2, 3, 4, 100]) == pytest.approx(3.0)  # the middle three of five
    rng = np.random.default_rng(0)
    for n in (4, 5, 8, 13):
        x = rng.normal(size=n)
        assert iqm(x) == pytest.approx(trim_mean(x, 0.25))
    with pytest.raises(ValueError):
        iqm([])


def test_iqm_bootstrap_ci_brackets_the_iqm_and_is_reproducible():
    x = [0.2, 0.5, 0.55, 0.6, 0.9]
    low, high = iqm_bootstrap_ci(x)
    assert low <= iqm(x) <= high
    assert (low, high) == iqm_bootstrap_ci(x)
    assert iqm_bootstrap_ci([0.7] * 5) == pytest.approx((0.7, 0.7))
