"""How the ingress scores a prompt on arrival: through the shared predictor actor (one per
cluster, batching concurrent calls), or, where the predictor cannot run, with the prompt-length
heuristic in process."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from cluster.registry import Registry
from predictor_actor.heuristic import heuristic_lengths, heuristic_scores

if TYPE_CHECKING:
    from serve_app.config import PredictorSettings

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

    def describe(self) -> str:
        return "predictor actor"


def _heuristic(settings: PredictorSettings) -> Scorer:
    return HeuristicScorer()


def _predictor(settings: PredictorSettings) -> Scorer:
    return PredictorActorScorer(settings.model, settings.num_cpus, settings.threads)


def _auto(settings: PredictorSettings) -> Scorer:
    """The predictor, unless its dependencies (torch) are not installed here."""
    try:
        return _predictor(settings)
    except ImportError as e:
        logger.warning("predictor unavailable (%s); scoring by prompt length", e)
        return HeuristicScorer()


SCORERS: Registry[Callable[[PredictorSettings], Scorer]] = Registry(
    "scorer", {"auto": _auto, "predictor": _predictor, "heuristic": _heuristic}
)


def make_scorer(settings: PredictorSettings) -> Scorer:
    return SCORERS[settings.scorer](settings)
