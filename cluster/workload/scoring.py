"""What the length-aware policies rank a workload by: ltr reads each request's `score`, ssjf
and hrrn its `predicted_tokens`. A simulation fills them from the true lengths (a predictor
with no error) or from a scorer it is given, never by importing a predictor itself."""

from __future__ import annotations

import dataclasses
import math
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


def with_predictions(items: list[WorkloadItem], scorer: WorkloadScorer) -> list[WorkloadItem]:
    if any(it.prompt is None for it in items):
        raise ValueError("a predictor needs prompt text; this workload has lengths only")
    scores, lengths = scorer.predict([it.prompt for it in items])
    return [
        dataclasses.replace(it, score=float(s), predicted_tokens=float(n))
        for it, s, n in zip(items, scores, lengths, strict=True)
    ]
