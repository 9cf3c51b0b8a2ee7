"""`rankserve simulate`: compare scheduling policies on one workload in virtual time.

The predictor reaches it as an injected `model_scorer` (the `rankserve` command passes the
shipped one), so the simulator itself depends on no model code."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable

from cluster.config import (
    AdmissionConfig,
    EngineConfig,
    PolicyConfig,
    PreemptionConfig,
    SchedulerConfig,
    SLOClass,
    SLOConfig,
    SLOSearchConfig,
)
from cluster.policies import POLICIES
from cluster.sim.cli_args import add_arguments
from cluster.sim.report import format_table, plot_cdfs
from cluster.sim.simulator import SimulationConfig, SimulationResult, simulate
from cluster.sim.step_time import load_profile
from cluster.workload.prompts import DEMO_PROMPT_FILE, read_prompt_file
from cluster.workload.scoring import (
    WorkloadScorer,
    with_noisy_lengths,
    with_predictions,
    with_true_lengths,
)
from cluster.workload.workload import WorkloadItem, build_workload

# model directory (None: the shipped model) -> a scorer of prompts with it
ModelScorerFactory = Callable[[str | None], WorkloadScorer]


def register(
    subparsers: argparse._SubParsersAction,
    name: str,
    help_text: str,
    model_scorer: ModelScorerFactory | None = None,
) -> None:
    p = subparsers.add_parser(
        name,
        help=help_text,
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=run, model_scorer=model_scorer)


def load_items(args: argparse.Namespace) -> list[WorkloadItem]:
    prompts = None
    if not args.lengths_from_trace:
        prompts = read_prompt_file(args.prompts or DEMO_PROMPT_FILE)
    items = build_workload(
        prompts,
        args.arrivals,
        args.num_requests,
        args.seed,
        target_rate=args.target_rate,
        lengths_from_trace=args.lengths_from_trace,
        max_output_tokens=args.max_output_tokens,
    )
    chosen = [args.true_lengths, args.prediction_noise is not None, args.predictor is not None]
    if sum(chosen) > 1:
        raise ValueError("give one of --true-lengths, --prediction-noise and --predictor")
    if args.true_lengths:
        return with_true_lengths(items)
    if args.prediction_noise is not None:
        return with_noisy_lengths(items, args.prediction_noise, args.seed)
    if args.predictor is None:
        return items
    if args.model_scorer is None:
        raise ValueError("--predictor needs the predictor, which this command was not given")
    return with_predictions(
        items, args.model_scorer(None if args.predictor == "default" else args.predictor)
    )


def json_safe(value: object) -> object:
    """JSON has no NaN: a statistic over no values (no completions yet, or no answer of two
    tokens for TPOT) is written as null."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def slo_config(classes: list[str] | None, default: str | None) -> SLOConfig:
    if not classes:
        return SLOConfig() if default is None else SLOConfig(default=default)
    parsed = tuple(SLOClass.parse(c) for c in classes)
    return SLOConfig(parsed, default or parsed[0].name)


def run(args: argparse.Namespace) -> int:
    try:
        names = POLICIES.parse_list(args.policy or ["fcfs,oracle"])
        profiles = [load_profile(name) for name in args.profile.split(",")]
        profile = profiles[0]
        # several profiles: a mixed cluster, replicas taking them in turn
        mixed = tuple(profiles[i % len(profiles)] for i in range(args.replicas))
        items = load_items(args)
        engine = EngineConfig(
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens,
            num_kv_blocks=args.num_kv_blocks,
            enable_prefix_caching=args.prefix_caching or bool(args.host_offload_gib),
            host_offload_gib=args.host_offload_gib,
            host_link_gb_s=args.host_link_gb_s,
        )
        slos = slo_config(args.slo_class, args.slo_default)
        results: list[SimulationResult] = []
        for name in names:
            policy = PolicyConfig(
                name=name,
                starvation_threshold=args.starvation_threshold,
                priority_quantum=args.priority_quantum,
                ltr_max_wait_s=args.ltr_max_wait,
                slice_max_overhead=args.slice_max_overhead,
                slo_search=SLOSearchConfig(
                    iterations=args.slo_iterations,
                    max_wall_ms=args.slo_wall_ms,
                    seed=args.seed,
                ),
            )
            scheduler = SchedulerConfig(
                policy=policy,
                slice_tokens=args.slice_tokens,
                kv_headroom_fraction=args.kv_headroom,
                routing=args.routing,
                routing_seed=args.seed,
                admission=AdmissionConfig(
                    max_queued=args.max_queued,
                    max_queue_wait_s=args.max_queue_wait,
                    queue_timeout_s=args.queue_timeout,
                    slo_unreachable=args.slo_unreachable,
                    best_effort_class=args.slo_best_effort,
                ),
                slo=slos,
                preemption=PreemptionConfig(
                    enabled=args.preemption,
                    min_run_tokens=args.preempt_min_run_tokens,
                    max_per_request=args.preempt_max_per_request,
                    min_gain_ratio=args.preempt_gain_ratio,
                    kv_retention=engine.enable_prefix_caching,
                ),
            )
            config = SimulationConfig(
                scheduler,
                engine,
                profile,
                replicas=args.replicas,
                replica_profiles=mixed if len(profiles) > 1 else (),
                until_completions=args.until_completions,
                time_limit_s=args.time_limit,
                progress=not args.no_progress and sys.stderr.isatty(),
            )
            results.append(simulate(items, config))
    except (ValueError, OSError) as err:
        print(f"rankserve simulate: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        for result in results:
            print(json.dumps(json_safe(result.to_dict()), allow_nan=False))
    else:
        print(
            f"{len(items)} requests, arrivals {args.arrivals}, {args.replicas} replica(s), "
            f"profile {args.profile}"
            + (f", routing {args.routing}" if args.routing != "global" else "")
        )
        print(format_table(results))
    if args.plot:
        plot_cdfs(results, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0
