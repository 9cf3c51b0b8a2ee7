"""The shared predictor as a Ray actor: one per cluster, called concurrently by every ingress
replica. It hosts a BatchingPredictor (predictor_actor.batching), so concurrent callers share
batches and each batch is one call into the model.

    actor = start_predictor_actor(PredictorConfig())
    score = await actor.score.remote("Write a haiku")            # float, higher = longer
    preds = await actor.predict_many.remote(["a", "b"])           # list[Prediction]
    event = ray.get(actor.rollback.remote())                      # undo the last swap (learning)
    ray.get(actor.health.remote())                                # dict, "status": ok|degraded
"""

from __future__ import annotations

import asyncio
import logging
import os

import ray

from cluster.runtime.log_setup import LogConfig, configure_logging
from cluster.runtime.metrics_export import PUBLISH_EVERY_S, RayPublisher
from predictor_actor.batching import BatchingPredictor, Prediction, PredictorConfig
from predictor_actor.metrics import predictor_families

logger = logging.getLogger(__name__)

ACTOR_NAME = "rankserve-predictor"  # cluster.runtime.names.PREDICTOR_ACTOR


class PredictorActor:
    """Async Ray actor: many calls run concurrently on its event loop and meet in batches."""

    def __init__(
        self,
        config: PredictorConfig | None = None,
        torch_threads: int | None = None,
        logs: LogConfig | None = None,
    ) -> None:
        configure_logging(logs or LogConfig(), "predictor", ACTOR_NAME)
        if torch_threads:
            os.environ["RANKSERVE_TORCH_THREADS"] = str(torch_threads)
        self._predictor = BatchingPredictor(config or PredictorConfig())
        self._metrics = asyncio.get_running_loop().create_task(self._publish_metrics())

    async def predict(self, prompt, served: str | None = None) -> Prediction:
        return await self._predictor.predict(prompt, served)

    async def predict_many(self, prompts: list, served: str | None = None) -> list[Prediction]:
        return await self._predictor.predict_many(list(prompts), served)

    async def score(self, prompt) -> float:
        return (await self._predictor.predict(prompt)).score

    async def score_many(self, prompts: list) -> list[float]:
        return [p.score for p in await self._predictor.predict_many(list(prompts))]

    async def health(self) -> dict:
        return self._predictor.health()

    async def _publish_metrics(self) -> None:
        """Its metrics into Ray's metrics API (Ray's exporter serves them as ray_rankserve_*)."""
        ray_metrics = RayPublisher()
        while True:
            await asyncio.sleep(PUBLISH_EVERY_S)
            try:
                ray_metrics.publish(predictor_families(self._predictor.health()))
            except Exception:  # metrics never take the predictor down; said once, then off
                logger.exception("publishing the predictor's metrics to Ray failed; stopped")
                return

    async def rollback(self, served: str | None = None) -> dict:
        """Serve again the version before the last swap of `served` (None: the default served
        model); the event as logged. Raises when learning is off or there is nothing to undo."""
        if self._predictor.learning is None:
            raise RuntimeError("learning is off: this predictor has no versions to roll back")
        return self._predictor.learning.rollback(served)


def start_predictor_actor(
    config: PredictorConfig | None = None,
    name: str | None = ACTOR_NAME,
    num_cpus: float = 1.0,
    torch_threads: int | None = None,
    max_concurrency: int = 1000,
    namespace: str | None = None,
    logs: LogConfig | None = None,
):
    """Start the predictor actor and return its handle. Named (every ingress replica finds the
    same one), it is detached, owned by no ingress, and restarted by Ray when it dies: callers
    keep their handle across restarts. Unnamed, it lives as long as its caller (tests,
    benchmarks). `num_cpus` is what Ray reserves; `torch_threads` how many threads the encoder
    uses (default: min(4, cores))."""
    cls = ray.remote(PredictorActor)
    options = {"num_cpus": num_cpus, "max_concurrency": max_concurrency}
    if name:
        options.update(
            name=name,
            get_if_exists=True,
            lifetime="detached",
            max_restarts=-1,
            max_task_retries=0,  # a call in flight at a death fails; the caller falls back
        )
        if namespace:
            options["namespace"] = namespace
    return cls.options(**options).remote(config or PredictorConfig(), torch_threads, logs)
