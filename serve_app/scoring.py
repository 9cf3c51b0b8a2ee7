"""How the ingress scores a prompt on arrival: through the shared predictor actor (one per
cluster, batching concurrent calls), or, where the predictor cannot run, with the prompt-length
heuristic in process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from cluster.registry import Registry
from cluster.runtime.names import NAMESPACE, PREDICTOR_ACTOR
from predictor_actor.heuristic import heuristic_lengths, heuristic_scores

if TYPE_CHECKING:
    from cluster.runtime.log_setup import LogConfig
    from serve_app.config import PredictorSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Score:
    score: float  # rank score: higher means a longer predicted answer
    predicted_tokens: float | None


class Scorer(Protocol):
    async def score(self, prompt: str) -> Score: ...

    def describe(self) -> str: ...

    def degraded(self) -> str | None:
        """Why the scores are not the configured scorer's right now; None when they are."""
        ...

    async def health(self) -> dict | None:
        """The predictor actor's health (its metrics); None without one."""
        ...


class HeuristicScorer:
    """Score = log1p(prompt characters): no model, no torch."""

    async def score(self, prompt: str) -> Score:
        return Score(float(heuristic_scores([prompt])[0]), float(heuristic_lengths([prompt])[0]))

    def describe(self) -> str:
        return "prompt-length heuristic (in the ingress)"

    def degraded(self) -> str | None:
        return None

    async def health(self) -> dict | None:
        return None


class PredictorActorScorer:
    """The cluster's predictor actor (predictor_actor.actor): detached, named, restarted by
    Ray. Each call has a deadline; while the actor is away or slow, prompts are scored by the
    heuristic here (a circuit breaker skips the actor, probing it again after a backoff), and
    `degraded()` says why. It comes back by itself: a restarted actor answers the same handle,
    one that is gone for good is started again."""

    BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0)

    def __init__(self, settings: PredictorSettings, logs: LogConfig | None = None) -> None:
        from predictor_actor.actor import start_predictor_actor
        from predictor_actor.batching import PredictorConfig

        self.settings = settings
        self._start = lambda: start_predictor_actor(
            PredictorConfig(
                model_dir=settings.model, bf16=settings.bf16, learning=settings.learning
            ),
            name=PREDICTOR_ACTOR,
            num_cpus=settings.num_cpus,
            torch_threads=settings.threads,
            namespace=NAMESPACE,
            logs=logs,
        )
        self._actor: Any = self._start()
        self._fallback = HeuristicScorer()
        self._reason: str | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._version: str | None = None  # the predictor version of the last score
        self._last_swap: str = ""

    async def score(self, prompt: str) -> Score:
        if self._reason is not None and time.monotonic() < self._retry_at:
            return await self._fallback.score(prompt)
        try:
            prediction = await asyncio.wait_for(
                self._actor.predict.remote(prompt), self.settings.deadline_s
            )
        except Exception as exc:  # noqa: BLE001 - slow, restarting or gone: serve anyway
            self._down(exc)
            return await self._fallback.score(prompt)
        if self._reason is not None:
            logger.warning("predictor back after %d failed calls", self._failures)
        self._reason = "the predictor's model did not load" if prediction.fallback else None
        self._failures = 0
        if prediction.version != self._version:
            self._version = prediction.version
            asyncio.get_running_loop().create_task(self._read_last_swap())
        return Score(prediction.score, prediction.predicted_tokens)

    async def _read_last_swap(self) -> None:
        """What /status says of the serving version: the swap or rollback that made it."""
        with contextlib.suppress(Exception):
            health = await asyncio.wait_for(self._actor.health.remote(), self.settings.deadline_s)
            served = (health.get("learning") or {}).get("models", {})
            for model in served.values():
                events = [e for e in model["last_events"] if e["event"] in ("swap", "rollback")]
                if events and events[-1]["to"] == self._version:
                    self._last_swap = json.dumps(events[-1], sort_keys=True)

    def _down(self, exc: Exception) -> None:
        from ray.exceptions import ActorDiedError

        what = (
            f"no answer within {self.settings.deadline_s:g} s"
            if isinstance(exc, TimeoutError)
            else f"{type(exc).__name__}"
        )
        if self._failures == 0:
            logger.error("PREDICTOR UNAVAILABLE (%s): scoring by prompt length meanwhile", what)
        self._failures += 1
        self._reason = f"predictor: {what}"
        backoff = self.BACKOFF_S[min(self._failures, len(self.BACKOFF_S)) - 1]
        self._retry_at = time.monotonic() + backoff
        if isinstance(exc, ActorDiedError):
            # Ray restarts it; one killed for good (`ray kill`) has freed its name: start
            # another. Either way the named actor is what this handle should be.
            with contextlib.suppress(Exception):
                self._actor = self._start()

    def describe(self) -> str:
        if self._version is None:
            return "predictor actor"
        return f"predictor actor, version {self._version}" + (
            f", since {self._last_swap}" if self._last_swap else ""
        )

    def degraded(self) -> str | None:
        return self._reason

    async def health(self) -> dict | None:
        return await self._actor.health.remote()


def _heuristic(settings: PredictorSettings, logs: LogConfig | None) -> Scorer:
    return HeuristicScorer()


def _predictor(settings: PredictorSettings, logs: LogConfig | None) -> Scorer:
    return PredictorActorScorer(settings, logs)


def _auto(settings: PredictorSettings, logs: LogConfig | None) -> Scorer:
    """The predictor, unless its dependencies (torch) are not installed here."""
    try:
        return _predictor(settings, logs)
    except ImportError as e:
        logger.warning("predictor unavailable (%s); scoring by prompt length", e)
        return HeuristicScorer()


SCORERS: Registry[Callable[[PredictorSettings, LogConfig | None], Scorer]] = Registry(
    "scorer", {"auto": _auto, "predictor": _predictor, "heuristic": _heuristic}
)


def make_scorer(settings: PredictorSettings, logs: LogConfig | None = None) -> Scorer:
    """`logs`: the predictor actor's log set-up, where one is started."""
    return SCORERS[settings.scorer](settings, logs)
