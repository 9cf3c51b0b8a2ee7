"""The serving path with the simulated engine (no model in the engines) and slicing on: a real
local Ray cluster, Serve, the scheduler actor and two simulated replicas stepped in real time.
Every request is served in slices of a few tokens, so it goes back to the global queue and is
dispatched again several times, yet the client gets one unbroken stream of exactly max_tokens."""

from __future__ import annotations

import json
import time

import pytest

pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray")
httpx = pytest.importorskip("httpx")

from serve_app import launcher  # noqa: E402

MODEL = "rankserve-tiny-llama"
SLICE = 8


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    settings = {
        "num_replicas": 2,
        "engine": {"max_num_seqs": 4},
        "scheduler": {"slice_tokens": SLICE},
        "replica": {"kind": "simulated", "work_dir": str(tmp_path_factory.mktemp("sim"))},
        "predictor": {"scorer": "heuristic"},
    }
    launcher.init_ray("local", 2)
    try:
        yield launcher.start(
            settings, "127.0.0.1", launcher.free_port(), launcher.free_port(), 300
        ).http
    finally:
        launcher.stop()


def test_sliced_requests_stream_every_token_once(url):
    with httpx.Client(base_url=url, timeout=120) as client:
        before = client.get("/status").json()
        req = {
            "model": MODEL,
            "prompt": "hello",
            "max_tokens": 5 * SLICE + 3,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        with client.stream("POST", "/v1/completions", json=req) as r:
            events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
        text = "".join(e["choices"][0]["text"] for e in events if e["choices"])
        assert events[-1]["usage"]["completion_tokens"] == 5 * SLICE + 3
        assert text == " tok" * (5 * SLICE + 3)
        assert events[-2]["choices"][0]["finish_reason"] == "length"
        after = client.get("/status").json()
        assert after["finished"] == before["finished"] + 1
        assert after["failed"] == before["failed"]


def test_many_sliced_requests_at_once(url):
    import asyncio

    async def main():
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            bodies = [
                {"model": MODEL, "prompt": "x" * (i + 1), "max_tokens": 3 + 7 * i}
                for i in range(12)
            ]
            replies = await asyncio.gather(
                *(client.post("/v1/completions", json=b) for b in bodies)
            )
            return bodies, replies

    bodies, replies = asyncio.run(main())
    for body, reply in zip(bodies, replies, strict=True):
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["completion_tokens"] == body["max_tokens"]


def test_redeploy_with_new_engine_settings_reaches_the_replicas(url, tmp_path):
    """The scheduler actor outlives deployments; a redeploy with other engine settings replaces
    the replicas (and a policy change applies while idle)."""
    from ray import serve

    from serve_app.app import APP_NAME, build_app

    settings = {
        "num_replicas": 2,
        "engine": {"max_num_seqs": 6},
        "scheduler": {"slice_tokens": SLICE, "policy": {"name": "fcfs"}},
        "replica": {"kind": "simulated", "work_dir": str(tmp_path)},
        "predictor": {"scorer": "heuristic"},
    }
    serve.run(build_app(settings), name=APP_NAME, route_prefix="/", blocking=False)
    launcher.wait_ready(url + "/ready", 120)
    with httpx.Client(base_url=url, timeout=60) as client:
        deadline = time.monotonic() + 60
        while True:
            status = client.get("/status").json()
            seqs = [r["info"]["max_num_seqs"] for r in status["replicas"] if r["info"]]
            if seqs == [6, 6] or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert seqs == [6, 6] and status["policy"] == "fcfs"
        r = client.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 20})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 20
