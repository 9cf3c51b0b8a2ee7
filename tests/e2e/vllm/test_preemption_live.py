"""Scheduler-driven preemption served for real (the package's vllm-cpu service, preemption
turned on for this test with loose guards): long requests fill every slot, a short one arrives
and takes one of their slots; it finishes first, the preempted request still streams exactly its
tokens, and its resume on its replica finds its context in vLLM's prefix cache (at most one
block computed again)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray")
pytest.importorskip("vllm")
httpx = pytest.importorskip("httpx")

from cluster.config import PreemptionConfig  # noqa: E402
from serve_app import launcher  # noqa: E402
from tests.e2e.clients import assert_whole, stream  # noqa: E402

LONG_PROMPT = "Please explain in great detail, with many examples, " * 12  # predicted long
LONG, SHORT, SLOTS = 300, 8, 4  # 2 replicas x max_num_seqs 2


def _set_preemption(config: PreemptionConfig) -> None:
    ray.get(launcher.scheduler().set_preemption.remote(config), timeout=30)


async def _wait(client, done, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = (await client.get("/status")).json()
        if done(status):
            return status
        await asyncio.sleep(0.05)
    raise AssertionError(f"not reached in {timeout} s: {status}")


def _idle(status: dict) -> bool:
    return status["queued"] + status["dispatched"] + status["running"] == 0


async def _scenario(base_url: str):
    async with httpx.AsyncClient(base_url=base_url, timeout=300) as client:
        await _wait(client, _idle)

        async def timed(max_tokens: int, prompt: str):
            result = await stream(client, max_tokens, prompt)
            return result, time.monotonic()

        longs = [asyncio.create_task(timed(LONG, LONG_PROMPT)) for _ in range(SLOTS)]
        await _wait(client, lambda s: s["running"] == SLOTS)
        await asyncio.sleep(0.3)  # each long one well past min_run_tokens
        short, short_done = await timed(SHORT, "hi")
        during = (await client.get("/status")).json()
        finished = await asyncio.gather(*longs)
        after = await _wait(client, _idle)
        return short, short_done, finished, during, after


def test_a_short_request_preempts_a_long_one_which_resumes_from_the_prefix_cache(server, http):
    endpoints, work = server
    _set_preemption(PreemptionConfig(enabled=True, min_run_tokens=4, min_gain_ratio=2.0))
    try:
        short, short_done, longs, during, after = asyncio.run(_scenario(endpoints.http))
    finally:
        _set_preemption(PreemptionConfig())  # the package's other tests run without it
    assert_whole([short] + [r for r, _ in longs], [SHORT] + [LONG] * SLOTS)
    assert all(short_done < done for _, done in longs)  # it did not wait for a slot
    assert during["scheduler_preemptions"] >= 1 and during["preempted"]
    assert after["scheduler_preemptions"] >= during["scheduler_preemptions"]

    entries = [json.loads(line) for line in Path(work / "requests.jsonl").read_text().splitlines()]
    by_id = {e["id"]: e for e in entries}
    logged = [by_id[r["id"]] for r, _ in longs]
    preempted = [e for e in logged if e.get("scheduler_preemptions")]
    assert preempted and set(during["preempted"]) <= {e["id"] for e in preempted}
    block = max(r["info"]["block_size"] for r in after["replicas"] if r["info"])
    for entry in preempted:
        assert entry["output_tokens"] == LONG and entry["finish_reason"] == "length"
        assert entry["dispatches"] == 1 + entry["scheduler_preemptions"]
        prefills = entry["prefills"]
        assert len(prefills) == entry["dispatches"]
        # Each resume continues from the prompt plus what the client already has...
        assert prefills[0][0] == entry["prompt_tokens"]
        contexts = [context for context, _ in prefills]
        assert contexts == sorted(set(contexts))
        # ...and, on the replica it left, recomputes at most one block of that context.
        for context, cached in prefills[1:]:
            assert cached >= context - block, (context, cached, block)
