"""`python -m benchmarks.bench_simulator prefix`: prefix-cache-aware placement on Mooncake's
conversation trace (issue 15; needs ../shared/datasets).

Mooncake's trace carries each prompt's chained 512-token block hashes (`hash_ids`): the turns
of a conversation share their history, so a replica that served a turn holds most of the next
one's prefill. The rows that fit Llama-3-8B's 8,192-token context, replayed at 0.5x and 0.9x
the rate where the queue of KV-only placement starts to grow, on 4 and 8 a100-llama3-8b
replicas with vLLM's prefix caching and the profile's KV budget (as vLLM sizes it: 54 GiB of
an A100's 80 GiB, 444,640 tokens). fcfs everywhere, so that only placement differs:

- global: rankserve's cluster-wide queue with KV-only placement (most free KV);
- prefix_aware: the same queue, placed by cache hit, queued prefill, KV (cluster.prefix_routing);
- prefix_affinity: a model of Ray Serve LLM's PrefixCacheAffinityRouter (replica queues);
- power_of_two: Ray Serve's default router.
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from benchmarks.report import update_section
from benchmarks.sim_preemption import MOONCAKE_CONV, PROFILE, trace_window
from cluster.config import EngineConfig, PolicyConfig, SchedulerConfig
from cluster.latency_model import LatencyModel
from cluster.prefix_blocks import TRACE_BLOCK_TOKENS
from cluster.sim.simulator import SimulationConfig, SimulationResult, simulate
from cluster.sim.step_time import load_profile
from cluster.workload.datasets import default_shared_dir
from cluster.workload.workload import WorkloadItem

ROUTINGS = ("global", "prefix_aware", "prefix_affinity", "power_of_two")
LOADS = (0.5, 0.9)


def run(items: list[WorkloadItem], routing: str, replicas: int, seed: int) -> SimulationResult:
    scheduler = SchedulerConfig(
        policy=PolicyConfig(name="fcfs"), routing=routing, routing_seed=seed
    )
    engine = EngineConfig(enable_prefix_caching=True)
    return simulate(items, SimulationConfig(scheduler, engine, load_profile(PROFILE), replicas))


def prefill_computed(r: SimulationResult) -> int:
    """Context tokens the engines prefilled: every admission's context less its cache hit."""
    return r.admitted_tokens - r.cached_tokens


def ideal(items: list[WorkloadItem]) -> tuple[float, float]:
    """What no placement can beat on these requests: (the share of prompt tokens in leading
    blocks that some earlier request had, i.e. the hit rate of one infinite cache that saw
    every request; the mean TTFT if each request found those blocks cached and had an idle
    replica to itself, its uncached rest prefilled alone: no queue, no decode alongside)."""
    latency = LatencyModel.named(PROFILE)
    seen: set[int] = set()
    hit = total = 0
    ttft = []
    for item in items:
        blocks = item.hash_ids or ()
        shared = next((i for i, h in enumerate(blocks) if h not in seen), len(blocks))
        cached = min(item.prompt_tokens, shared * TRACE_BLOCK_TOKENS)
        seen.update(blocks)
        hit, total = hit + cached, total + item.prompt_tokens
        ttft.append(latency.prefill_s(item.prompt_tokens - cached))
    return hit / max(1, total), float(np.mean(ttft))


def _cells(
    results: dict[str, list[SimulationResult]], bounds: list[tuple[float, float]]
) -> list[str]:
    def mean(rs: list[SimulationResult], f) -> float:
        return float(np.mean([f(r) for r in rs]))

    base = mean(results["global"], lambda r: r.metrics.ttft_s.mean)
    affinity = mean(results["prefix_affinity"], lambda r: r.metrics.ttft_s.mean)
    rows = [
        "| routing | mean TTFT (s) | vs global | vs prefix_affinity | p99 TTFT (s) | mean e2e (s) "
        "| prefill tokens computed | prefix-cache hit rate | req/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, rs in results.items():
        ttft = mean(rs, lambda r: r.metrics.ttft_s.mean)
        rows.append(
            f"| {name} | {ttft:.3f} | **{base / ttft:.2f}x** | {affinity / ttft:.2f}x | "
            f"{mean(rs, lambda r: r.metrics.ttft_s.p99):.3f} | "
            f"{mean(rs, lambda r: r.metrics.e2e_latency_s.mean):.2f} | "
            f"{mean(rs, prefill_computed):,.0f} | "
            f"{100 * mean(rs, lambda r: r.cached_tokens / max(1, r.admitted_tokens)):.1f}% | "
            f"{mean(rs, lambda r: r.metrics.throughput_rps):.2f} |"
        )
    hit_bound = float(np.mean([b[0] for b in bounds]))
    ttft_bound = float(np.mean([b[1] for b in bounds]))
    rows.append(
        f"| *ideal bound* | {ttft_bound:.3f} | **{base / ttft_bound:.2f}x** | "
        f"{affinity / ttft_bound:.2f}x | | | | {100 * hit_bound:.1f}% | |"
    )
    lost = sum(r.unfinished for rs in results.values() for r in rs)
    rows += ["", f"Requests left unfinished over all these runs: {lost}."]
    return rows


def saturated_rate(path: str, requests: int, replicas: int) -> float:
    """Throughput of KV-only placement under overload (offered far above it): the rate where
    its queue starts to grow."""
    items = trace_window(path, requests, 0, 100.0 * replicas)
    return run(items, "global", replicas, 0).metrics.throughput_rps


def prefix(seeds: int = 3, requests: int = 2000, replica_counts: tuple[int, ...] = (4, 8)) -> None:
    shared = default_shared_dir()
    if not shared.is_dir():
        raise SystemExit(f"prefix needs the data sets in {shared}")
    path = str(shared / MOONCAKE_CONV)
    runs = len(replica_counts) * (1 + len(LOADS) * seeds * len(ROUTINGS))
    bar = tqdm(total=runs, desc="simulations", unit="run")
    body = [
        "fcfs, prefix caching on in every engine, a100-llama3-8b replicas with the profile's KV "
        f"budget; the Mooncake rows that fit 8,192 tokens, windows of {requests:,} requests "
        "(seed k: the k-th window), at a fraction of the rate where KV-only placement's queue "
        f"grows. Means over {seeds} seeds. 'prefill tokens computed': context tokens prefilled "
        "(admissions' context less their cache hits). 'ideal bound': what no placement "
        "can beat, from the requests alone: the hit rate of one infinite cache that saw every "
        "request (the share of prompt tokens in leading blocks some earlier request had), and "
        "the mean TTFT if every request found those blocks cached on an idle replica of its "
        "own (its uncached rest prefilled alone, by the profile; no queue, no decode "
        "alongside).",
    ]
    for replicas in replica_counts:
        knee = saturated_rate(path, requests, replicas)
        bar.update()
        for load in LOADS:
            rate = load * knee
            results: dict[str, list[SimulationResult]] = {name: [] for name in ROUTINGS}
            bounds = []
            for seed in range(seeds):
                items = trace_window(path, requests, seed, rate)
                bounds.append(ideal(items))
                for name in ROUTINGS:
                    results[name].append(run(items, name, replicas, seed))
                    bar.update()
            body += [
                "",
                f"### {replicas} x A100, Mooncake conversation trace at {rate:.1f} req/s "
                f"({load:g}x; the queue of global grows above {knee:.1f})",
                "",
                *_cells(results, bounds),
            ]
            for name, rs in results.items():
                ttft = np.mean([r.metrics.ttft_s.mean for r in rs])
                tqdm.write(f"{replicas} replicas {load:g}x {name}: mean TTFT {ttft:.3f} s")
    bar.close()
    update_section(
        "sim-prefix",
        "\n".join(body),
        f"python -m benchmarks.bench_simulator prefix --seeds {seeds}",
    )
