"""The flags of `rankserve simulate` (cluster.sim.cli runs them): workload, scheduling,
admission, engines and the run, each default taken from the config it sets."""

from __future__ import annotations

import argparse
from pathlib import Path

from cluster.config import (
    SLO_UNREACHABLE,
    PolicyConfig,
    PreemptionConfig,
    SchedulerConfig,
    SLOConfig,
    SLOSearchConfig,
)
from cluster.policies import POLICIES
from cluster.routing import ROUTINGS
from cluster.sim.step_time import available_profiles
from cluster.workload.prompts import DEMO_PROMPT_FILE


def _share_or_none(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def add_arguments(p: argparse.ArgumentParser) -> None:
    w = p.add_argument_group("workload")
    w.add_argument(
        "--prompts",
        type=Path,
        default=None,
        help=f"prompt file (JSONL: prompt, output_tokens, ...); default: {DEMO_PROMPT_FILE.name}",
    )
    w.add_argument(
        "--arrivals",
        default="burst",
        help="burst | poisson:RATE | gamma:RATE:CV | trace:FILE[@RATE]",
    )
    w.add_argument(
        "--num-requests",
        "-n",
        type=int,
        default=None,
        help="requests to send (default: one per prompt or trace row)",
    )
    w.add_argument(
        "--target-rate",
        type=float,
        default=None,
        help="scale a trace's timestamps to this mean rate (req/s)",
    )
    w.add_argument(
        "--lengths-from-trace",
        action="store_true",
        help="take prompt and answer lengths from the trace rows (no prompt file)",
    )
    w.add_argument("--max-output-tokens", type=int, default=None, help="cap answer lengths")
    s = p.add_argument_group("scheduling")
    s.add_argument(
        "--policy",
        action="append",
        default=None,
        help=f"policy to run (repeat or comma-separate): {', '.join(POLICIES.names)}; "
        "default: fcfs and oracle",
    )
    s.add_argument(
        "--predictor",
        default=None,
        metavar="DIR",
        help="score prompts with this trained ranking model (ltr), and predict "
        "lengths with its regressor (ssjf, hrrn); 'default' = shipped model",
    )
    s.add_argument(
        "--true-lengths",
        action="store_true",
        help="feed true answer lengths to ltr/ssjf/hrrn (a predictor with no error)",
    )
    s.add_argument(
        "--prediction-noise",
        type=float,
        metavar="SD",
        help="feed true lengths times a log-normal error of SD (traces have no prompts to "
        "predict from; the shipped predictor's error is about 0.8)",
    )
    s.add_argument("--starvation-threshold", type=int, default=PolicyConfig().starvation_threshold)
    s.add_argument("--priority-quantum", type=int, default=PolicyConfig().priority_quantum)
    s.add_argument(
        "--ltr-max-wait",
        type=float,
        default=None,
        metavar="S",
        help="ltr: a request queued S seconds goes ahead of every score, oldest first",
    )
    s.add_argument(
        "--slice-tokens",
        type=int,
        default=None,
        help="dispatch in slices of at most this many tokens",
    )
    s.add_argument(
        "--slice-max-overhead",
        type=_share_or_none,
        default=PolicyConfig().slice_max_overhead,
        metavar="SHARE",
        help="a promoted request's slice runs on until its resume's recomputed prefill is at "
        "most SHARE of the slice's engine time; none: the fixed quantum (Fu et al. 2024)",
    )
    s.add_argument(
        "--routing",
        choices=ROUTINGS.names,
        default="global",
        help="global: one cluster-wide queue, dispatched in policy order to replicas with room "
        "(rankserve); prefix_aware: the same queue, placed by expected prefix-cache hit against "
        "queued prefill, KV and slots (use with --prefix-caching); power_of_two: Ray Serve's "
        "default router, each request sent at once to the less busy of two random replicas, "
        "which queue for themselves (the baseline); prefix_affinity: a model of Ray Serve LLM's "
        "PrefixCacheAffinityRouter",
    )
    s.add_argument(
        "--kv-headroom",
        type=float,
        default=SchedulerConfig().kv_headroom_fraction,
        help="fraction of a replica's KV cache kept free when dispatching",
    )
    s.add_argument(
        "--slo-class",
        action="append",
        default=None,
        metavar="NAME:BOUNDS",
        help="an SLO class, NAME:e2e_s=S or NAME:ttft_s=S,tpot_s=S (optionally ,weight=W); "
        "repeat for several; requests name theirs in the prompt file's slo column "
        f"(default: {SLOConfig().classes[0].name}, e2e_s={SLOConfig().classes[0].e2e_s:g})",
    )
    s.add_argument(
        "--slo-default",
        default=None,
        help="class of requests that name none (default: the first --slo-class)",
    )
    s.add_argument(
        "--slo-iterations",
        type=int,
        default=SLOSearchConfig().iterations,
        help="slo policy: annealing proposals per plan",
    )
    s.add_argument(
        "--slo-wall-ms",
        type=float,
        default=None,
        help="slo policy: wall-time budget per plan (default: none here, so that a seed gives "
        "one result; the served scheduler's default is "
        f"{SLOSearchConfig().max_wall_ms:g} ms)",
    )
    s.add_argument(
        "--preemption",
        action="store_true",
        help="scheduler-driven preemption: end a long request's dispatch for a short waiting one",
    )
    s.add_argument("--preempt-min-run-tokens", type=int, default=PreemptionConfig().min_run_tokens)
    s.add_argument(
        "--preempt-max-per-request", type=int, default=PreemptionConfig().max_per_request
    )
    s.add_argument("--preempt-gain-ratio", type=float, default=PreemptionConfig().min_gain_ratio)
    a = p.add_argument_group("admission (off by default: whole bursts are queued)")
    a.add_argument("--max-queued", type=int, default=None, help="refuse past this queue length")
    a.add_argument(
        "--max-queue-wait",
        type=float,
        default=None,
        metavar="S",
        help="refuse while the queue's expected drain time exceeds S seconds",
    )
    a.add_argument(
        "--queue-timeout",
        type=float,
        default=None,
        metavar="S",
        help="drop a request not dispatched within S seconds of its arrival",
    )
    a.add_argument(
        "--slo-unreachable",
        choices=SLO_UNREACHABLE,
        default="off",
        help="a request whose SLO no replica could meet even at the head of the queue: "
        "refused at once (reject), or put in --slo-best-effort's class (demote)",
    )
    a.add_argument(
        "--slo-best-effort",
        default=None,
        metavar="CLASS",
        help="the --slo-class that --slo-unreachable demote puts such requests in",
    )
    e = p.add_argument_group("engines")
    e.add_argument("--replicas", type=int, default=1)
    e.add_argument(
        "--profile",
        default="a100-llama3-8b",
        help=f"step-time profile: {', '.join(available_profiles())}, or a JSON file; several, "
        "comma-separated, make a mixed cluster (replicas take them in turn)",
    )
    e.add_argument(
        "--max-num-seqs",
        type=int,
        default=None,
        help="vLLM max_num_seqs (default: vLLM's default for the profile's GPU)",
    )
    e.add_argument(
        "--max-num-batched-tokens",
        type=int,
        default=None,
        help="vLLM max_num_batched_tokens (default: vLLM's for the profile's GPU)",
    )
    e.add_argument(
        "--num-kv-blocks",
        type=int,
        default=None,
        help="KV blocks per replica (default: from the profile's memory model)",
    )
    e.add_argument(
        "--prefix-caching",
        action="store_true",
        help="vLLM's automatic prefix caching in the engines (freed blocks kept, LRU-evicted)",
    )
    e.add_argument(
        "--host-offload-gib",
        type=float,
        default=0.0,
        help="KV offloading to host memory per engine, GiB (implies --prefix-caching)",
    )
    e.add_argument("--host-link-gb-s", type=float, help="host link per engine, GB/s")
    r = p.add_argument_group("run")
    r.add_argument(
        "--until-completions",
        type=int,
        default=None,
        metavar="K",
        help="stop after K answers (synthetic data generation); reports time to K",
    )
    r.add_argument(
        "--time-limit",
        type=float,
        default=None,
        metavar="T",
        help="stop at T virtual seconds; reports answers done within T",
    )
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--json", action="store_true", help="print one JSON object per policy")
    r.add_argument(
        "--plot", type=Path, default=None, metavar="FILE.png", help="write latency CDFs per policy"
    )
    r.add_argument("--no-progress", action="store_true")
