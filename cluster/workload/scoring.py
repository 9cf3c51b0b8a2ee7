"""What the length-aware policies rank a workload by: ltr reads each request's `score`, ssjf
and hrrn its `predicted_tokens`. A simulation fills them from the true lengths (a predictor
with no error) or from a scorer it is given, never by importing a predictor itself."""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Sequence
from typing import Protocol

from cluster.workload.workload import WorkloadItem


class WorkloadScorer(Protocol):
    def predict(self, prompts: list[str]) -> tuple[Sequence[float], Sequence[float]]:
        """(rank score, predicted answer tokens) of each prompt; a higher score means a longer
        predicted answer."""
        ...


def with_true_lengths(items: list[WorkloadItem]) -> list[WorkloadItem]:
    return [
        dataclasses.replace(
            it, score=math.log(it.output_tokens), predicted_tokens=float(it.output_tokens)
        )
        for it in items
    ]


def with_noisy_lengths(items: list[WorkloadItem], sd: float, seed: int) -> list[WorkloadItem]:
    """True lengths times a log-normal error of `sd` (a stand-in for a predictor on traces,
    which carry lengths but no prompts: the shipped model's error on held-out prompts has sd
    0.74-0.94 in log space), rounded to a token at least."""
    if sd < 0:
        raise ValueError("the prediction noise sd must be >= 0")
    rng = random.Random(seed)
    out = []
    for it in items:
        predicted = max(1.0, it.output_tokens * math.exp(rng.gauss(0.0, sd)))
        out.append(dataclasses.replace(it, score=math.log(predicted), predicted_tokens=predicted))
    return out


def with_predictions(items: list[WorkloadItem], scorer: WorkloadScorer) -> list[WorkloadItem]:
    if any(it.prompt is None for it in items):
        raise ValueError("a predictor needs prompt text; this workload has lengths only")
    scores, lengths = scorer.predict([it.prompt for it in items])
    return [
        dataclasses.replace(it, score=float(s), predicted_tokens=float(n))
        for it, s, n in zip(items, scores, lengths, strict=True)
    ]
