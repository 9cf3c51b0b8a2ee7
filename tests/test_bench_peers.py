"""The peer benchmark's pure parts: the round-robin proxy in front of two tiny HTTP servers
(no vLLM), and the figures (ratios against the best peer, tables, the CDF plot)."""

from __future__ import annotations

import asyncio
import itertools
import json

import pytest

from benchmarks.peer_stats import PeerResult, best_peer, cdf_plot, ratio, startup_table, table
from cluster.metrics import RequestTiming


def _timings(e2e: list[float], ttft: float = 0.1, tokens: int = 11) -> list[RequestTiming]:
    return [RequestTiming(0.0, ttft, e, tokens) for e in e2e]


def _result(system: str, peer: bool, e2e: list[float], failed: int = 0, workload: str = "burst"):
    return PeerResult.of(system, peer, workload, _timings(e2e), failed, [])


def test_the_best_peer_is_the_fastest_that_dropped_nothing_and_ratios_are_against_it():
    slow = _result("vllm", True, [2.0, 4.0])
    fast_but_dropping = _result("ray", True, [0.5, 0.5], failed=1)
    ours = _result("rankserve ltr", False, [1.0, 2.0])
    results = [
        slow,
        fast_but_dropping,
        ours,
        _result("faster, other workload", True, [0.1], 0, "p"),
    ]
    assert best_peer(results, "burst") is slow
    assert ratio(ours, slow, "e2e_latency_s") == pytest.approx(1.5 / 3.0)
    assert ratio(ours, slow, "ttft_s") == pytest.approx(1.0)
    # Same tokens over half the duration: twice the throughput.
    assert ratio(ours, slow, "throughput_tps") == pytest.approx(2.0)
    assert best_peer([ours], "burst") is None


def test_the_table_has_a_row_per_system_of_the_workload_with_the_ratios():
    slow = _result("vllm", True, [2.0, 4.0])
    ours = _result("rankserve ltr", False, [1.0, 2.0])
    other = _result("vllm", True, [9.0], workload="poisson:3")
    lines = table([slow, ours, other], "burst").splitlines()
    assert len(lines) == 4 and all(line.count("|") == 19 for line in lines)
    assert lines[2].startswith("| vllm (best peer) | 2/2 | 3.00 | ")
    assert "| 1.00x | 1.00x |" in lines[2]
    assert lines[3].startswith("| rankserve ltr | 2/2 | 1.50 | ")
    assert "| 0.50x | 0.50x |" in lines[3] and lines[3].endswith(" 2.00x |")


def test_a_system_that_completed_nothing_gets_dashes_and_start_up_failures_are_shown():
    dead = _result("ray", True, [], failed=3)
    row = table([dead], "burst").splitlines()[2]
    assert row.startswith("| ray | 0/3 |") and row.count(" - |") == 16
    text = startup_table({"vllm": 31.25, "ray": "failed: TimeoutError: x"})
    assert "| vllm | 31.2 |" in text and "| ray | failed: TimeoutError: x |" in text


def test_results_survive_json_and_the_cdf_plot_is_written(tmp_path):
    results = [_result("vllm", True, [3.0, 1.0, 2.0]), _result("rankserve", False, [1.0])]
    again = [PeerResult(**json.loads(json.dumps(r.to_dict()))) for r in results]
    assert again == results and again[0].e2e_s == [1.0, 2.0, 3.0]
    cdf_plot(again, tmp_path / "cdf.png")
    assert (tmp_path / "cdf.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _needs_aiohttp() -> None:
    pytest.importorskip("aiohttp", reason="the peers extra (scripts/setup_peers.sh)")


async def _serve(app, port_holder: list[int]):
    from aiohttp import web

    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port_holder.append(site._server.sockets[0].getsockname()[1])
    return runner


def _backend(name: str, first_seen: list[asyncio.Event]):
    from aiohttp import web

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for i in range(body["n"]):
            await response.write(f"data: {name}-{i}\n\n".encode())
            if i == 0:  # the rest only once the client has the first: a proxy must not buffer
                try:
                    await asyncio.wait_for(first_seen[-1].wait(), 5)
                except TimeoutError:
                    await response.write(b"data: buffered\n\n")
        await response.write_eof()
        return response

    async def missing(request: web.Request) -> web.Response:
        return web.json_response({"error": f"{name}: no {request.path_qs}"}, status=404)

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/{tail:.*}", missing)
    return app


def test_the_proxy_sends_requests_to_each_backend_in_turn_and_streams_their_answers():
    """Each answer's first event reaches the client while the backend is still answering."""
    _needs_aiohttp()
    import httpx

    from benchmarks.peer_proxy import make_app

    async def scenario():
        ports: list[int] = []
        first_seen: list[asyncio.Event] = []
        runners = [await _serve(_backend(name, first_seen), ports) for name in ("a", "b")]
        proxy = await _serve(make_app([f"http://127.0.0.1:{p}" for p in ports]), ports)
        url = f"http://127.0.0.1:{ports[2]}"
        seen = []
        try:
            async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                for n in (3, 2, 1, 2):
                    first_seen.append(asyncio.Event())
                    async with client.stream("POST", "/v1/completions", json={"n": n}) as r:
                        assert r.status_code == 200
                        assert r.headers["content-type"] == "text/event-stream"
                        lines = []
                        async for line in r.aiter_lines():
                            if line:
                                lines.append(line)
                                first_seen[-1].set()
                        seen.append(lines)
                missing = await client.get("/v1/nothing?x=1")
        finally:
            for runner in [*runners, proxy]:
                await runner.cleanup()
        return seen, missing

    seen, missing = asyncio.run(scenario())
    assert seen == [
        ["data: a-0", "data: a-1", "data: a-2"],
        ["data: b-0", "data: b-1"],
        ["data: a-0"],
        ["data: b-0", "data: b-1"],
    ]
    # The fifth request, to a: its status and body come back as they were, path and query too.
    assert missing.status_code == 404 and missing.json() == {"error": "a: no /v1/nothing?x=1"}


def test_the_proxy_needs_a_backend():
    _needs_aiohttp()
    from benchmarks.peer_proxy import make_app

    with pytest.raises(ValueError, match="at least one backend"):
        make_app([])


def _fake_openai_server():
    """A tiny OpenAI-style streaming completions server in a thread of its own: one event per
    token asked for, then the usage; returns (base URL, stop)."""
    import threading

    from aiohttp import web

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(body["max_tokens"]):
            event = {"choices": [{"index": 0, "text": "x"}]}
            await response.write(f"data: {json.dumps(event)}\n\n".encode())
        usage = {"prompt_tokens": 3, "completion_tokens": body["max_tokens"]}
        await response.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "fake"}]})

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", models)
    loop = asyncio.new_event_loop()
    ports: list[int] = []
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(_serve(app, ports))
        ready.set()
        loop.run_forever()

    threading.Thread(target=serve, daemon=True).start()
    assert ready.wait(10)
    return f"http://127.0.0.1:{ports[0]}", lambda: loop.call_soon_threadsafe(loop.stop)


def test_a_running_endpoint_is_measured_on_the_burst_then_poisson_at_the_burst_s_capacity():
    _needs_aiohttp()
    import argparse

    from benchmarks.bench_peers import run_system, workload_records
    from benchmarks.peer_systems import EngineSettings, External

    url, stop = _fake_openai_server()
    args = argparse.Namespace(
        burst_n=5,
        poisson_n=4,
        seed=0,
        max_output_tokens=20,
        poisson_rate=None,
        load=0.5,
        timeout=30.0,
    )
    system = External("fake", "external", EngineSettings(model="-"), url=url)
    rate: list[float] = []
    try:
        results, _ = run_system(system, args, workload_records(16), rate)
    finally:
        stop()
    burst, poisson = results
    assert (burst.workload, burst.peer, burst.metrics["completions"]) == ("burst", True, 5)
    assert rate == [pytest.approx(0.5 * burst.metrics["throughput_rps"])]
    assert poisson.workload == f"poisson:{rate[0]:.2f}" and poisson.metrics["completions"] == 4
    assert not burst.errors and not poisson.errors
    # Lengths forced from the prompt file, at least 16 tokens and capped at 20.
    tokens = round(
        burst.metrics["throughput_tps"] * burst.metrics["duration_s"], 6
    )  # a rate x time
    assert 16 * 5 <= tokens <= 20 * 5


def test_prometheus_counters_are_summed_over_label_sets_by_name():
    from benchmarks.peer_systems import counter_total

    text = "\n".join(
        [
            "# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of tokens.",
            'vllm:prefix_cache_hits_total{engine="0",model_name="tiny"} 1152.0',
            'vllm:prefix_cache_hits_total{engine="1",model_name="tiny"} 128.0',
            'vllm:prefix_cache_hits_created{engine="0",model_name="tiny"} 1.79e+09',
            'vllm:external_prefix_cache_hits_total{engine="0",model_name="tiny"} 7.0',
            "ray_vllm_prefix_cache_hits_total 64",
        ]
    )
    assert counter_total(text, "vllm:prefix_cache_hits_total") == 1280
    assert (
        counter_total(text, "ray_vllm_prefix_cache_hits", "ray_vllm_prefix_cache_hits_total") == 64
    )
    assert counter_total("", "vllm:prefix_cache_hits_total") == 0


def test_each_conversation_turn_extends_the_previous_one_and_fits_the_context():
    from benchmarks.bench_prefix_live import conversations

    items, sent = conversations(5, 4, 2.0, 3.0, 16, seed=0, max_len=800)
    by_conversation: dict[str, list] = {}
    for it in sorted(items, key=lambda it: it.request_id):
        by_conversation.setdefault(it.request_id.split("-")[0], []).append(it)
    assert len(by_conversation) == 5 and sent == sum(it.prompt_tokens for it in items)
    system = items[0].prompt.split("\n\nUser:")[0]
    for turns in by_conversation.values():
        for earlier, later in itertools.pairwise(turns):
            assert later.prompt.startswith(earlier.prompt)  # the history is its prefix
            assert later.arrival_time == pytest.approx(earlier.arrival_time + 3.0)
        assert all(t.prompt.startswith(system) for t in turns)
    assert all(it.prompt_tokens + 16 <= 800 for it in items)
    assert any(len(t) < 4 for t in by_conversation.values())  # some outgrew 800 tokens


def test_the_hit_rate_bounds_count_whole_engine_blocks_of_the_longest_earlier_prefix():
    from benchmarks.bench_prefix_live import ENGINE_BLOCK, conversations, hit_bounds

    items, sent = conversations(6, 3, 2.0, 3.0, 16, seed=1, max_len=1200)
    bounds = hit_bounds(items, sent)
    assert 0 < bounds["round robin over 2"] < bounds["one cache"] < 1
    # one item alone finds nothing; the same prompt twice finds all its whole blocks but one
    # token (the last must be computed)
    one = items[:1]
    assert hit_bounds(one, one[0].prompt_tokens)["one cache"] == 0
    twice = hit_bounds(one * 2, 2 * one[0].prompt_tokens)["one cache"]
    assert (
        twice * 2 * one[0].prompt_tokens
        == (one[0].prompt_tokens - 1) // ENGINE_BLOCK * ENGINE_BLOCK
    )
