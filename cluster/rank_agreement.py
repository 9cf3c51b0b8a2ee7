"""Rank agreement between predicted scores and true lengths.

`kendall_tau_b` is Knight's O(n log n) algorithm (sort, then count discordant pairs as merge-sort
inversions), so that evaluating a whole file of tens of thousands of prompts stays fast; it is
checked against scipy.stats.kendalltau in the tests.
"""

from __future__ import annotations

import numpy as np


def _tied_pairs(sorted_values: np.ndarray) -> int:
    """Pairs with equal values, for an already sorted array."""
    if sorted_values.size == 0:
        return 0
    change = np.flatnonzero(np.diff(sorted_values) != 0)
    runs = np.diff(np.concatenate(([0], change + 1, [sorted_values.size])))
    return int((runs * (runs - 1) // 2).sum())


def _inversions(values: np.ndarray) -> int:
    """Pairs i < j with values[i] > values[j] (bottom-up merge sort, vectorised per pass)."""
    a = np.asarray(values).copy()
    n = a.size
    count = 0
    width = 1
    while width < n:
        for lo in range(0, n - width, 2 * width):
            mid, hi = lo + width, min(lo + 2 * width, n)
            left, right = a[lo:mid], a[mid:hi]
            # Each right element jumps over the left elements strictly greater than it.
            count += int((left.size - np.searchsorted(left, right, side="right")).sum())
            a[lo:hi] = np.sort(np.concatenate((left, right)), kind="mergesort")
        width *= 2
    return count


def kendall_tau_b(x: np.ndarray | list, y: np.ndarray | list) -> float:
    """Kendall's tau-b between two sequences (ties handled as in scipy); nan if undefined."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(
            f"kendall_tau_b needs two 1-D arrays of equal length, got {x.shape}, {y.shape}"
        )
    n = x.size
    if n < 2:
        return float("nan")
    order = np.lexsort((y, x))  # by x, then y
    xs, ys = x[order], y[order]
    n0 = n * (n - 1) // 2
    n1 = _tied_pairs(xs)  # ties in x
    # ties in both x and y: equal (x, y) runs in the lexsorted order
    same = np.concatenate(([False], (np.diff(xs) == 0) & (np.diff(ys) == 0)))
    starts = np.flatnonzero(~same)
    runs = np.diff(np.concatenate((starts, [n])))
    n3 = int((runs * (runs - 1) // 2).sum())
    discordant = _inversions(ys)
    n2 = _tied_pairs(np.sort(ys))
    concordant_minus_discordant = n0 - n1 - n2 + n3 - 2 * discordant
    denom = np.sqrt(float(n0 - n1) * float(n0 - n2))
    if denom == 0:
        return float("nan")
    return float(concordant_minus_discordant / denom)


def spearman(x: np.ndarray | list, y: np.ndarray | list) -> float:
    """Spearman's rank correlation (average ranks for ties); nan if undefined."""
    rx, ry = _average_ranks(np.asarray(x, float)), _average_ranks(np.asarray(y, float))
    if rx.size < 2 or rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def _average_ranks(a: np.ndarray) -> np.ndarray:
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(a.size, dtype=np.float64)
    sa = a[order]
    change = np.concatenate(([True], np.diff(sa) != 0, [True]))
    bounds = np.flatnonzero(change)
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        ranks[order[lo:hi]] = (lo + hi - 1) / 2.0
    return ranks


def mean_list_tau(
    scores: np.ndarray, lengths: np.ndarray, list_size: int = 32, seed: int = 0
) -> float:
    """Mean tau-b over random disjoint lists of `list_size` prompts: the batches the scheduler
    actually orders. The last, shorter list is dropped; lists with undefined tau are skipped."""
    scores, lengths = np.asarray(scores, float), np.asarray(lengths, float)
    perm = np.random.default_rng(seed).permutation(scores.size)
    taus = []
    for start in range(0, scores.size - list_size + 1, list_size):
        idx = perm[start : start + list_size]
        t = kendall_tau_b(scores[idx], lengths[idx])
        if not np.isnan(t):
            taus.append(t)
    return float(np.mean(taus)) if taus else float("nan")
