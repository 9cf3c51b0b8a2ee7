"""How well the predictor's ranking matches the answers the service actually produced.

The scheduler feeds every request that ends on its own into a sliding window: a request cut off
by its `max_tokens` is left out, because its natural length is unknown. The status shows Kendall
tau-b between the scores and the produced lengths over the window, and, where the predictor
gives lengths too, the median ratio of predicted to produced tokens. A tau well below the model
card's held-out figure means live traffic has drifted from the training data: retrain on the
request log (docs/predictor.md).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from cluster.rank_agreement import kendall_tau_b
from cluster.request import Request

# Below this many answers tau swings too much to act on; the status says None instead.
MIN_SAMPLES = 20


@dataclass(frozen=True, slots=True)
class RankQuality:
    window: int  # capacity: the most recent answers considered
    samples: int  # answers in the window
    kendall_tau: float | None  # scores vs produced lengths; None below MIN_SAMPLES
    median_length_ratio: float | None  # predicted / produced tokens; None without predictions


class RankQualityMonitor:
    def __init__(self, window: int) -> None:
        if window < MIN_SAMPLES:
            raise ValueError(f"rank quality window must be >= {MIN_SAMPLES}, got {window}")
        self._scores: deque[float] = deque(maxlen=window)
        self._predicted: deque[float | None] = deque(maxlen=window)
        self._produced: deque[int] = deque(maxlen=window)

    def record(self, request: Request) -> None:
        """A finished request; ignored without a score, or when it stopped at its cap."""
        if request.score is None or not 0 < request.generated < request.max_tokens:
            return
        self._scores.append(request.score)
        self._predicted.append(request.predicted_tokens)
        self._produced.append(request.generated)

    def summary(self) -> RankQuality:
        n = len(self._scores)
        tau = None
        if n >= MIN_SAMPLES:
            value = kendall_tau_b(
                np.fromiter(self._scores, float), np.fromiter(self._produced, float)
            )
            tau = None if np.isnan(value) else round(value, 4)
        pairs = [(p, t) for p, t in zip(self._predicted, self._produced, strict=True) if p]
        ratio = round(float(np.median([p / t for p, t in pairs])), 3) if pairs else None
        return RankQuality(self._scores.maxlen or 0, n, tau, ratio)
