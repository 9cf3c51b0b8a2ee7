"""The shared predictor actor on a real local Ray: concurrent callers share batches and each
gets its own scores, in order; a broken model dir gives a degraded but working actor."""

import asyncio

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from predictor_actor.actor import start_predictor_actor  # noqa: E402
from predictor_actor.batching import PredictorConfig  # noqa: E402
from predictor_actor.heuristic import heuristic_scores  # noqa: E402
from predictor_actor.model import RankingModel  # noqa: E402


def _prompts(caller: int, n: int) -> list[str]:
    return [
        f"Caller {caller}, request {i}: " + "explain this in detail " * (i % 7) for i in range(n)
    ]


def test_concurrent_callers_get_their_own_scores_in_order(ray_local):
    actor = start_predictor_actor(
        PredictorConfig(max_batch_size=32, max_wait_ms=50, bf16=False), name=None, torch_threads=1
    )
    assert ray.get(actor.health.remote())["status"] == "ok"
    callers = 8
    per_caller = {c: _prompts(c, 12) for c in range(callers)}
    singles = [f"single prompt number {i}" + "!" * i for i in range(16)]

    async def load():
        many = [actor.predict_many.remote(per_caller[c]) for c in range(callers)]
        one = [actor.score.remote(p) for p in singles]
        return await asyncio.gather(*many), await asyncio.gather(*one)

    many, one = asyncio.run(load())
    model = RankingModel.load()
    for c in range(callers):
        got = [p.score for p in many[c]]
        np.testing.assert_allclose(got, model.score(per_caller[c]), atol=1e-4)
    np.testing.assert_allclose(one, model.score(singles), atol=1e-4)
    health = ray.get(actor.health.remote())
    total = callers * 12 + len(singles)
    assert health["prompts"] == total
    assert health["batches"] < total / 4  # callers really shared batches
    assert health["largest_batch"] <= 32
    ray.kill(actor)


def test_actor_with_missing_model_serves_the_heuristic(ray_local, tmp_path):
    actor = start_predictor_actor(PredictorConfig(model_dir=str(tmp_path / "gone")), name=None)
    health = ray.get(actor.health.remote())
    assert health["status"] == "degraded" and "does not exist" in health["error"]
    prompts = ["short", "a much longer prompt " * 20, ""]
    got = ray.get(actor.score_many.remote(prompts))
    np.testing.assert_allclose(got, heuristic_scores(prompts))
    ray.kill(actor)
