"""How the ingress scores a prompt on arrival: through the shared predictor actor (one per
cluster, batching concurrent calls), or, where the predictor cannot run, with the prompt-length
heuristic in process."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from predictor_actor.heuristic import heuristic_lengths, heuristic_scores

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Score:
    score: float  # rank score: higher means a longer predicted answer
    predicted_tokens: float | None


class Scorer(Protocol):
    async def score(self, prompt: str) -> Score: ...

    def describe(self) -> str: ...


class HeuristicScorer:
    """Score = log1p(prompt characters): no model, no torch."""

    async def score(self, prompt: str) -> Score:
        return Score(float(heuristic_scores([prompt])[0]), float(heuristic_lengths([prompt])[0]))

    def describe(self) -> str:
        return "prompt-length heuristic (in the ingress)"


class PredictorActorScorer:
    """The cluster's predictor actor (predictor_actor.actor), started if not running yet."""

    def __init__(self, model_dir: str | None, num_cpus: float, torch_threads: int | None) -> None:
        from predictor_actor.actor import start_predictor_actor
        from predictor_actor.batching import PredictorConfig

        self._actor: Any = start_predictor_actor(
            PredictorConfig(model_dir=model_dir), num_cpus=num_cpus, torch_threads=torch_threads
        )

    async def score(self, prompt: str) -> Score:
        prediction = await self._actor.predict.remote(prompt)
        return Score(prediction.score, prediction.predicted_tokens)

    async def health(self) -> dict:
        return await self._actor.health.remote()

    def describe(self) -> str:
        return "predictor actor"


def make_scorer(
    kind: str, model_dir: str | None, num_cpus: float, torch_threads: int | None
) -> Scorer:
    """`kind`: "predictor", "heuristic", or "auto" (the predictor, unless its dependencies
    (torch) are not installed here)."""
    if kind == "heuristic":
        return HeuristicScorer()
    try:
        return PredictorActorScorer(model_dir, num_cpus, torch_threads)
    except ImportError as e:
        if kind == "predictor":
            raise
        logger.warning("predictor unavailable (%s); scoring by prompt length", e)
        return HeuristicScorer()
