"""`python -m benchmarks.sim_autoscaling`: autoscaling engine replicas against fixed fleets in
the simulator, on the Azure 2023 conversation trace with its rate swings (lengths from the
trace, timestamps scaled to a mean rate), A100 replicas; replica-hours and latency of each
(needs ../shared/datasets)."""

from __future__ import annotations

import argparse
import dataclasses
import math

import numpy as np

from benchmarks.report import update_section
from benchmarks.sim_common import AZURE_CONV
from cluster.config import (
    AutoscalingConfig,
    EngineConfig,
    PolicyConfig,
    SchedulerConfig,
    SLOClass,
    SLOConfig,
)
from cluster.metrics import meets_slo
from cluster.sim.simulator import SimulationConfig, SimulationResult, simulate
from cluster.sim.step_time import load_profile
from cluster.workload.datasets import default_shared_dir
from cluster.workload.scoring import with_true_lengths
from cluster.workload.workload import WorkloadItem, build_workload

FIXED = (2, 4, 8)
# Judged after the run (ltr reads no SLO): the SLO mix's chat class (benchmarks/bench_slo.py),
# and one twice as tight.
SLOS = {
    "chat SLO (TTFT 1 s, TPOT 40 ms)": SLOClass("default", ttft_s=1.0, tpot_s=0.04),
    "tight SLO (TTFT 0.5 s, TPOT 20 ms)": SLOClass("default", ttft_s=0.5, tpot_s=0.02),
}


def over_a_day(items: list[WorkloadItem], day_s: float, swing: float) -> list[WorkloadItem]:
    """The trace compressed into one day of `day_s` seconds: its arrivals moved by a time change
    so that the rate follows mean x (1 - swing x cos(2 pi t / day)) (night at the start and the
    end, the peak at midday) on top of the trace's own swings, in the same order."""
    t = np.array([i.arrival_time for i in items])
    t = (t - t[0]) * day_s / max(t[-1] - t[0], 1e-9)
    grid = np.linspace(0.0, day_s, 100_001)
    cumulative = grid - swing * day_s / (2 * math.pi) * np.sin(2 * math.pi * grid / day_s)
    moved = np.interp(t, cumulative, grid)
    return [
        dataclasses.replace(i, arrival_time=float(a)) for i, a in zip(items, moved, strict=True)
    ]


def run(items: list, replicas: int, autoscaling: AutoscalingConfig, startup_s: float):
    config = SimulationConfig(
        SchedulerConfig(policy=PolicyConfig(name="ltr"), autoscaling=autoscaling),
        EngineConfig(),
        load_profile("a100-llama3-8b"),
        replicas=replicas,
        replica_startup_s=startup_s,
    )
    return simulate(items, config)


def attainment(r: SimulationResult, slo: SLOClass) -> float:
    """Share of every request sent that finished within `slo` (an unfinished one missed it)."""
    slos = SLOConfig(classes=(slo,))
    met = sum(meets_slo(t, slos) for t in r.timings)
    return met / (len(r.timings) + r.unfinished)


def row(label: str, r: SimulationResult, reference_hours: float) -> str:
    m = r.metrics
    hours = r.extra["replica_seconds"] / 3600
    slos = "".join(f" {100 * attainment(r, slo):.1f}% |" for slo in SLOS.values())
    return (
        f"| {label} | {hours:.2f} | {hours / reference_hours:.0%} | {m.e2e_latency_s.mean:.2f} | "
        f"{m.e2e_latency_s.p99:.2f} | {m.ttft_s.mean:.2f} | {m.ttft_s.p99:.2f} |{slos} "
        f"{m.completions} | {r.unfinished} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=20.0, help="mean arrival rate (req/s)")
    parser.add_argument("-n", "--num-requests", type=int, default=None, help="first N rows")
    parser.add_argument("--startup", type=float, default=60.0, help="replica start-up (s)")
    parser.add_argument("--target-wait", type=float, default=AutoscalingConfig().target_wait_s)
    parser.add_argument(
        "--target-ongoing", type=float, default=AutoscalingConfig().target_ongoing_requests
    )
    parser.add_argument("--max-replicas", type=int, default=8)
    parser.add_argument(
        "--forecast",
        type=float,
        default=None,
        help="autoscaling's forecast_s (default: the up delay plus --startup, the time a "
        "replica asked for takes to serve)",
    )
    parser.add_argument(
        "--downscale-delay",
        type=float,
        default=None,
        help="autoscaling's downscale_delay_s (default: --startup: an idle replica is kept as "
        "long as getting it back would take)",
    )
    parser.add_argument(
        "--day-swing",
        type=float,
        default=None,
        help="replay the trace over one compressed day whose rate swings by this fraction of "
        "the mean (0-1), night to midday",
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    shared = default_shared_dir()
    if not shared.is_dir():
        raise SystemExit(f"this benchmark needs the data sets in {shared}")
    items = with_true_lengths(
        build_workload(
            None,
            f"trace:{shared / AZURE_CONV}",
            args.num_requests,
            seed=0,
            target_rate=args.rate,
            lengths_from_trace=True,
        )
    )
    if args.day_swing is not None:
        items = over_a_day(items, items[-1].arrival_time - items[0].arrival_time, args.day_swing)
    off = AutoscalingConfig()
    auto = dataclasses.replace(
        off,
        enabled=True,
        min_replicas=1,
        max_replicas=args.max_replicas,
        target_wait_s=args.target_wait,
        target_ongoing_requests=args.target_ongoing,
        downscale_delay_s=args.startup if args.downscale_delay is None else args.downscale_delay,
        forecast_s=(off.upscale_delay_s + args.startup if args.forecast is None else args.forecast),
    )
    results = {f"fixed {n}": run(items, n, off, args.startup) for n in FIXED}
    results["autoscaling"] = run(items, 2, auto, args.startup)
    # The same targets with nothing late: no delays, no forecast, replicas up at once. What it
    # still loses to the largest fixed fleet is the load per replica it aims for.
    instant = dataclasses.replace(auto, upscale_delay_s=0, downscale_delay_s=0, forecast_s=0)
    results["instant autoscaling"] = run(items, 2, instant, 0.0)
    largest = results[f"fixed {max(FIXED)}"]
    ref_hours = largest.extra["replica_seconds"] / 3600
    lines = [
        f"### Autoscaling vs fixed fleets: Azure 2023 conversation trace at {args.rate:g} req/s "
        f"mean ({len(items)} requests, lengths from the trace"
        + (
            f", over a compressed day of {items[-1].arrival_time:.0f} s whose rate swings by "
            f"{args.day_swing:.0%} of the mean"
            if args.day_swing is not None
            else ""
        )
        + "), A100 replicas, ltr (true lengths)",
        "",
        f"Autoscaling: {auto.min_replicas}-{auto.max_replicas} replicas (starts at 2), target "
        f"wait {auto.target_wait_s:g} s, {auto.target_ongoing_requests:g} requests per replica, "
        f"up/down "
        f"delays {auto.upscale_delay_s:g}/{auto.downscale_delay_s:g} s, drain timeout "
        f"{auto.drain_timeout_s:g} s, load forecast {auto.forecast_s:g} s ahead, replicas "
        f"arrive {args.startup:g} s after they are started. Replica-hours: each replica from its start to its removal, over the run "
        "(until the last answer). Instant autoscaling: the same targets with no delays and "
        "replicas up as soon as asked for (a bound no autoscaler reaches).",
        "",
        "| fleet | replica-hours | of fixed 8 | mean e2e (s) | p99 e2e (s) | mean TTFT (s) "
        "| p99 TTFT (s) | " + " | ".join(SLOS) + " | done | unfinished |",
        "|---|---|---|---|---|---|---|" + "---|" * len(SLOS) + "---|---|",
    ]
    lines += [row(label, r, ref_hours) for label, r in results.items()]
    timeline = results["autoscaling"].extra["replica_timeline"]
    counts = [c for _, c in timeline]
    lines += [
        "",
        f"Autoscaling's fleet: {len(timeline) - 1} changes, between {min(counts)} and "
        f"{max(counts)} replicas held.",
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        update_section("sim-autoscaling", body)


if __name__ == "__main__":
    main()
