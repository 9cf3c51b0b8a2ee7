"""`rankserve bench`'s client (serve_app/bench.py) against a stand-in endpoint: each request
names its SLO class, and the run is judged per class on the client's own timings."""

from __future__ import annotations

import asyncio
import json
import time

import httpx

from cluster.config import SLOClass, SLOConfig
from cluster.metrics import summarize
from cluster.workload.workload import WorkloadItem
from serve_app.bench import LiveRun, _one, format_row

SLOS = SLOConfig((SLOClass("tight", e2e_s=0.01), SLOClass("loose", e2e_s=60.0)), "loose")


def _item(rid: str, slo: str | None, tokens: int = 3) -> WorkloadItem:
    return WorkloadItem(rid, 0.0, "say something", 3, tokens, None, None, slo, None)


def _endpoint(bodies: list[dict]) -> httpx.MockTransport:
    """After 50 ms, streams `max_tokens` one-token chunks and the usage; keeps each body."""

    async def handle(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.05)
        body = json.loads(request.content)
        bodies.append(body)
        n = body["max_tokens"]
        chunks = [{"choices": [{"text": "x"}]} for _ in range(n)]
        chunks.append({"choices": [], "usage": {"completion_tokens": n, "prompt_tokens": 3}})
        text = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        return httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})

    return httpx.MockTransport(handle)


def test_each_request_names_its_class_and_is_judged_by_it():
    bodies: list[dict] = []
    items = [_item("a", "tight"), _item("b", "loose"), _item("c", None)]
    run = LiveRun("fcfs", summarize([]), [], {}, [])

    async def send():
        async with httpx.AsyncClient(transport=_endpoint(bodies), base_url="http://x") as c:
            start = time.monotonic()
            return [await _one(c, "m", it, start, 10.0, run) for it in items]

    timings = asyncio.run(send())
    assert [b.get("slo") for b in bodies] == ["tight", "loose", None]
    assert all(b["max_tokens"] == 3 and b["ignore_eos"] for b in bodies)
    assert [t.slo for t in timings] == ["tight", "loose", None] and not run.errors

    metrics = summarize(timings, slos=SLOS)
    # every answer takes 50 ms: over `tight`'s 10 ms; the unnamed request is in `loose`
    assert metrics.slo_classes["tight"].met == 0
    assert (metrics.slo_classes["loose"].requests, metrics.slo_classes["loose"].met) == (2, 2)
    assert abs(metrics.slo_attainment - 2 / 3) < 1e-9
    row = format_row({"policy": "fcfs", **metrics.to_dict()}, "burst")
    assert "SLO 66.7% (tight 0.0%, loose 100.0%)" in row
