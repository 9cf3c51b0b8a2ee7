"""Rank metrics against scipy's reference implementations."""

import numpy as np
import pytest
from scipy import stats

from cluster.rank_agreement import kendall_tau_b, mean_list_tau, spearman


@pytest.mark.parametrize("n", [2, 3, 7, 50, 500])
def test_kendall_tau_b_matches_scipy_with_ties(n):
    rng = np.random.default_rng(n)
    for _ in range(20):
        x = rng.integers(0, 6, n).astype(float)
        y = x + rng.integers(0, 9, n)
        ours, ref = kendall_tau_b(x, y), stats.kendalltau(x, y).statistic
        assert (np.isnan(ours) and np.isnan(ref)) or ours == pytest.approx(ref, abs=1e-12)


def test_kendall_tau_b_large_continuous_matches_scipy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=20_000)
    y = x + rng.normal(size=20_000)
    assert kendall_tau_b(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)


def test_kendall_tau_b_extremes_and_bad_input():
    assert kendall_tau_b([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert kendall_tau_b([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert np.isnan(kendall_tau_b([1, 1, 1], [1, 2, 3]))
    assert np.isnan(kendall_tau_b([1], [1]))
    with pytest.raises(ValueError):
        kendall_tau_b([1, 2], [1, 2, 3])


def test_spearman_matches_scipy():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 10, 300)
    y = x + rng.integers(0, 10, 300)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)


def test_mean_list_tau_is_mean_over_lists_of_32():
    rng = np.random.default_rng(2)
    x = rng.normal(size=320)
    assert mean_list_tau(x, x) == pytest.approx(1.0)
    assert mean_list_tau(x, -x) == pytest.approx(-1.0)
    assert np.isnan(mean_list_tau(x[:10], x[:10]))  # fewer prompts than one list
