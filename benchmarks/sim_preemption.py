"""`python -m benchmarks.bench_simulator preemption`: ltr without and with scheduler-driven
preemption, the paused request's KV recomputed, retained in the prefix cache, or offloaded to
host memory (issue 13's matrix; needs ../shared/datasets).

- One a100-llama3-8b replica, 2,000-request bursts of held-out real prompts (AlpacaEval, with
  Llama-3-8B-Instruct's answers; the shipped predictor never saw them), ltr scored by the
  shipped predictor.
- Four replicas, the Azure 2023 conversation trace and Mooncake's conversation trace (lengths
  only; the rows that fit Llama-3-8B's 8,192-token context), replayed at 0.9, 1.1 and 1.3 times
  the rate where the queue starts to grow. The traces carry no prompts, so ltr is fed the true
  lengths times a log-normal error of sd 0.8, the shipped predictor's error on held-out prompts
  (0.74 on these AlpacaEval prompts, 0.94 on its own training split). Two placements
  without preemption beside them: Ray Serve's power of two, and rankserve's prefix_aware
  (Mooncake's block hashes give its prompts' shared prefixes; the Azure trace has none).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from benchmarks.prompt_sets import ALPACA_LLAMA3_8B, split_files
from benchmarks.report import update_section
from benchmarks.sim_common import AZURE_CONV
from cluster.config import EngineConfig, PolicyConfig, PreemptionConfig, SchedulerConfig
from cluster.sim.simulator import SimulationConfig, SimulationResult, simulate
from cluster.sim.step_time import load_profile
from cluster.workload.datasets import default_shared_dir
from cluster.workload.prompts import read_prompt_file
from cluster.workload.scoring import with_noisy_lengths, with_predictions
from cluster.workload.workload import WorkloadItem, build_workload

MOONCAKE_CONV = "mooncake_traces/conversation_trace.jsonl.gz"
PROFILE = "a100-llama3-8b"
MAX_MODEL_LEN = 8192
NOISE_SD = 0.8
HOST_GIB = 64.0  # host memory per engine for offloaded KV (a 1 TB server holds 8 of these)
LOADS = (0.9, 1.1, 1.3)


@dataclass(frozen=True)
class Variant:
    name: str
    preemption: bool
    prefix_caching: bool = True
    host_offload_gib: float = 0.0
    routing: str = "global"


VARIANTS = (
    Variant("no preemption", False),
    Variant("preemption, recompute", True, prefix_caching=False),
    Variant("preemption, retention", True),
    Variant("preemption, host offload", True, host_offload_gib=HOST_GIB),
)
RAY_SERVE = Variant("power_of_two (Ray Serve), no preemption", False, routing="power_of_two")
PREFIX_AWARE = Variant("prefix_aware, no preemption", False, routing="prefix_aware")


def run(items: list[WorkloadItem], v: Variant, replicas: int, seed: int) -> SimulationResult:
    scheduler = SchedulerConfig(
        policy=PolicyConfig(name="ltr"),
        routing=v.routing,
        routing_seed=seed,
        preemption=PreemptionConfig(enabled=v.preemption, kv_retention=v.prefix_caching),
    )
    engine = EngineConfig(
        enable_prefix_caching=v.prefix_caching, host_offload_gib=v.host_offload_gib
    )
    return simulate(items, SimulationConfig(scheduler, engine, load_profile(PROFILE), replicas))


class _UniquePromptScorer:
    """The shipped predictor, each distinct prompt scored once (a burst reuses them)."""

    def __init__(self) -> None:
        from predictor_actor.scoring import ModelScorer

        self._scorer = ModelScorer(None, None)
        self._known: dict[str, tuple[float, float]] = {}

    def predict(self, prompts: list[str]) -> tuple[list[float], list[float]]:
        new = sorted(set(prompts) - set(self._known))
        if new:
            scores, lengths = self._scorer.predict(new)
            self._known.update(zip(new, zip(scores, lengths, strict=True), strict=True))
        return [self._known[p][0] for p in prompts], [self._known[p][1] for p in prompts]


def trace_window(path: str, n: int, seed: int, rate: float) -> list[WorkloadItem]:
    """Rows [seed * n, (seed + 1) * n) of the trace that fit the context, replayed at `rate`."""
    rows = build_workload(None, f"trace:{path}", 3 * n + n, seed=0, lengths_from_trace=True)
    fits = [r for r in rows if r.prompt_tokens + r.output_tokens <= MAX_MODEL_LEN]
    window = fits[seed * n : (seed + 1) * n]
    t0 = window[0].arrival_time
    span = window[-1].arrival_time - t0
    scale = (len(window) - 1) / rate / span
    return [dataclasses.replace(r, arrival_time=(r.arrival_time - t0) * scale) for r in window]


def saturated_rate(make: Callable[[float], list[WorkloadItem]], replicas: int) -> float:
    """The rate where the queue starts to grow: the cluster's throughput under overload
    (offered at 3x a rough guess, fcfs); offered faster than this, the queue grows without
    bound."""
    items = make(100.0)
    scheduler = SchedulerConfig(policy=PolicyConfig(name="fcfs"))
    engine = EngineConfig(enable_prefix_caching=True)
    config = SimulationConfig(scheduler, engine, load_profile(PROFILE), replicas)
    return simulate(items, config).metrics.throughput_rps


def _cells(results: dict[str, list[SimulationResult]]) -> list[str]:
    base = np.mean([r.metrics.per_token_latency_s.mean for r in results[VARIANTS[0].name]])
    plain = np.mean([r.recomputed_tokens for r in results["preemption, recompute"]])
    rows = [
        "| variant | mean s/token | vs no preemption | p99 s/token | p99 max wait (s) | req/s "
        "| scheduler preemptions | recomputed prefill tokens | saved vs recompute |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, rs in results.items():
        m = [r.metrics for r in rs]
        ptl = np.mean([x.per_token_latency_s.mean for x in m])
        recomputed = np.mean([r.recomputed_tokens for r in rs])
        saved = f"{100 * (1 - recomputed / plain):.1f}%" if plain and "preemption," in name else "-"
        rows.append(
            f"| {name} | {ptl:.4f} | **{base / ptl:.2f}x** | "
            f"{np.mean([x.per_token_latency_s.p99 for x in m]):.4f} | "
            f"{np.mean([x.max_wait_s.p99 for x in m]):.1f} | "
            f"{np.mean([x.throughput_rps for x in m]):.2f} | "
            f"{np.mean([r.scheduler_preemptions for r in rs]):.0f} | {recomputed:,.0f} | {saved} |"
        )
    lost = sum(r.unfinished for rs in results.values() for r in rs)
    rows.append("")
    rows.append(f"Requests left unfinished over all these runs: {lost}.")
    return rows


def _measure(
    make: Callable[[int], list[WorkloadItem]],
    variants: tuple[Variant, ...],
    replicas: int,
    seeds: int,
    bar: tqdm,
) -> dict[str, list[SimulationResult]]:
    results: dict[str, list[SimulationResult]] = {v.name: [] for v in variants}
    for seed in range(seeds):
        items = make(seed)
        for v in variants:
            results[v.name].append(run(items, v, replicas, seed))
            bar.update()
    return results


def preemption(burst_seeds: int = 5, trace_seeds: int = 3, trace_requests: int = 2000) -> None:
    shared = default_shared_dir()
    if not shared.is_dir():
        raise SystemExit(f"preemption needs the data sets in {shared}")
    held_out = [
        r for f in split_files((ALPACA_LLAMA3_8B,), "val", "test") for r in read_prompt_file(f)
    ]
    scorer = _UniquePromptScorer()
    traces = {"Azure 2023 conversation": AZURE_CONV, "Mooncake conversation": MOONCAKE_CONV}
    runs = burst_seeds * len(VARIANTS) + len(traces) * (
        1 + len(LOADS) * trace_seeds * (len(VARIANTS) + 2)
    )
    bar = tqdm(total=runs, desc="simulations", unit="run")
    body = [
        f"ltr with the default guards ({PreemptionConfig()}); prefix caching on except in "
        f"'recompute'; host offload {HOST_GIB:g} GiB per engine over the profile GPU's PCIe link "
        "(PCIe 4.0 x16, 25 GB/s, for A100). 'saved vs recompute': recomputed prefill tokens "
        "against plain recompute. Means over seeds.",
        "",
        f"### 1 x A100, 2,000-request bursts of {len(held_out)} held-out AlpacaEval prompts, "
        f"shipped predictor, {burst_seeds} seeds",
        "",
    ]

    def burst(seed: int) -> list[WorkloadItem]:
        return with_predictions(build_workload(held_out, "burst", 2000, seed=seed), scorer)

    body += _cells(_measure(burst, VARIANTS, 1, burst_seeds, bar))
    for title, rel in traces.items():
        path = str(shared / rel)

        def window(rate: float, seed: int = 0, path: str = path) -> list[WorkloadItem]:
            return trace_window(path, trace_requests, seed, rate)

        knee = saturated_rate(window, 4)
        bar.update()
        for load in LOADS:
            rate = load * knee

            def make(seed: int, rate: float = rate) -> list[WorkloadItem]:
                return with_noisy_lengths(window(rate, seed), NOISE_SD, seed)

            variants = (*VARIANTS, RAY_SERVE, PREFIX_AWARE)
            results = _measure(make, variants, 4, trace_seeds, bar)
            body += [
                "",
                f"### 4 x A100, {title} trace at {load:g}x ({rate:.1f} req/s; the queue grows "
                f"above {knee:.1f}), {trace_requests:,} requests, {trace_seeds} seeds",
                "",
                *_cells(results),
            ]
            for name, rs in results.items():
                ptl = np.mean([r.metrics.per_token_latency_s.mean for r in rs])
                tqdm.write(f"{title} {load:g}x {name}: {ptl:.4f} s/token")
    bar.close()
    update_section(
        "sim-preemption",
        "\n".join(body),
        f"python -m benchmarks.bench_simulator preemption --seeds {burst_seeds}",
    )
