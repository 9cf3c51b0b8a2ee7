"""Runs the scheduling core against simulated vLLM engines in virtual time.

The same `Scheduler` that the live scheduler actor hosts makes every decision here; only the
clock and the engines differ. Events: arrivals (from the workload) and engine step completions.
All events at one instant are applied before one scheduling round, so a burst is ranked as a
whole rather than dispatched in arrival order.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tqdm import tqdm

from cluster.clock import VirtualClock
from cluster.config import EngineConfig, SchedulerConfig
from cluster.latency_model import LatencyModel
from cluster.metrics import RequestTiming, ServingMetrics, summarize, timing_of
from cluster.prefix_blocks import TraceBlocks
from cluster.request import Request, RequestState
from cluster.scheduler import Scheduler
from cluster.sim.autoscaling import SimAutoscaling
from cluster.sim.engine import SimulatedEngine, StepResult
from cluster.sim.host_tier import host_link_gb_s
from cluster.sim.step_time import StepTimeModel, StepTimeProfile
from cluster.workload.workload import WorkloadItem


@dataclass(frozen=True, slots=True)
class SimulationConfig:
    scheduler: SchedulerConfig
    engine: EngineConfig
    profile: StepTimeProfile
    replicas: int = 1
    # A mixed cluster: one profile per replica (its GPU and model), overriding `profile` and
    # `replicas`; each replica gets its profile's vLLM defaults and KV cache.
    replica_profiles: tuple[StepTimeProfile, ...] = ()
    # Synthetic-data-generation mode (LTR paper): stop after K answers, or at T seconds.
    until_completions: int | None = None
    time_limit_s: float | None = None
    progress: bool = False
    # With scheduler.autoscaling on: how long a replica takes from its start to taking requests
    # (a node and its GPU found, the engine loaded).
    replica_startup_s: float = 60.0

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError("replicas must be >= 1")
        if self.scheduler.autoscaling.enabled and self.replica_profiles:
            raise ValueError("autoscaling starts replicas of one profile; give one profile")
        if self.replica_profiles and len(self.replica_profiles) != self.replicas:
            raise ValueError(
                f"{len(self.replica_profiles)} replica profiles for {self.replicas} replicas"
            )


@dataclass(slots=True)
class SimulationResult:
    policy: str
    metrics: ServingMetrics
    timings: list[RequestTiming]
    requests: list[Request]
    virtual_time_s: float
    wall_time_s: float
    engine_steps: int
    engine_preemptions: int
    slices: int
    scheduler_preemptions: int
    unfinished: int
    shed: dict[str, int] = field(default_factory=dict)  # by admission control, by reason
    slo_demoted: int = 0  # admitted in the best-effort SLO class (cluster.slo_admission)
    time_to_k_s: float | None = None
    stopped_by: str = "drained"
    extra: dict = field(default_factory=dict)
    # Context tokens of all engine (re)admissions, and those found in the prefix cache.
    admitted_tokens: int = 0
    cached_tokens: int = 0
    recomputed_tokens: int = 0  # prefill of context computed once before (cluster.sim.engine)
    host_loaded_blocks: int = 0  # brought back from the host KV tier

    def to_dict(self) -> dict:
        out = {"policy": self.policy, **self.metrics.to_dict()}
        out["preemptions"] = self.engine_preemptions
        if self.scheduler_preemptions:
            out["scheduler_preemptions"] = self.scheduler_preemptions
        if self.admitted_tokens:
            out["prefix_cache_hit_rate"] = self.cached_tokens / self.admitted_tokens
        if self.recomputed_tokens:
            out["recomputed_tokens"] = self.recomputed_tokens
        if self.host_loaded_blocks:
            out["host_loaded_blocks"] = self.host_loaded_blocks
        out.update(
            slices=self.slices,
            unfinished=self.unfinished,
            virtual_time_s=self.virtual_time_s,
            wall_time_s=self.wall_time_s,
            engine_steps=self.engine_steps,
            stopped_by=self.stopped_by,
        )
        if self.time_to_k_s is not None:
            out["time_to_k_s"] = self.time_to_k_s
        if self.shed:
            out["shed"] = self.shed
        if self.slo_demoted:
            out["slo_demoted"] = self.slo_demoted
        return out


def to_request(item: WorkloadItem, block_size: int) -> Request:
    """The core's request for a workload item; its prompt blocks are known by the item's
    trace hash ids when it has them (cluster.prefix_blocks), else by its prompt text."""
    hashes = item.hash_ids
    return Request(
        request_id=item.request_id,
        prompt_tokens=item.prompt_tokens,
        max_tokens=item.output_tokens,  # forced length, as with ignore_eos in live benchmarks
        arrival_time=item.arrival_time,
        output_tokens=item.output_tokens,
        score=item.score,
        predicted_tokens=item.predicted_tokens,
        slo=item.slo,
        tenant=item.tenant,
        prefix_key=item.prompt,
        block_hashes=None
        if hashes is None
        else TraceBlocks(hashes, item.prompt_tokens, block_size),
    )


def vllm_batch_defaults(profile: StepTimeProfile) -> tuple[int, int]:
    """(max_num_seqs, max_num_batched_tokens) that vLLM 0.32's OpenAI server picks for the
    profile's device (vllm/engine/arg_utils.py, get_batch_defaults)."""
    name = profile.name.lower()
    if name.startswith("cpu"):
        return 128, 2048
    if "a100" in name or profile.gpu_memory_gib < 70:
        return 256, 2048
    if profile.gpu_memory_gib >= 160:
        return 1024, 16384
    return 1024, 8192


def resolve_engine(engine: EngineConfig, profile: StepTimeProfile) -> EngineConfig:
    """The engine settings with vLLM's defaults and the profile's KV cache filled in."""
    seqs, tokens = vllm_batch_defaults(profile)
    return dataclasses.replace(
        engine,
        max_num_seqs=engine.max_num_seqs or seqs,
        max_num_batched_tokens=engine.max_num_batched_tokens or tokens,
        num_kv_blocks=engine.num_kv_blocks or profile.num_kv_blocks,
        block_size=profile.block_size,
        max_model_len=min(engine.max_model_len, profile.max_model_len),
        host_link_gb_s=engine.host_link_gb_s or _host_link(engine, profile),
    )


def _host_link(engine: EngineConfig, profile: StepTimeProfile) -> float | None:
    if not engine.host_offload_gib:
        return None
    return host_link_gb_s(profile.name, profile.tensor_parallel)


# (replica id, engine settings, step-time model, KV blocks) -> an engine; tests pass one that
# audits every step.
EngineFactory = Callable[[str, EngineConfig, StepTimeModel, int], SimulatedEngine]


def simulate(
    items: list[WorkloadItem],
    config: SimulationConfig,
    engine_factory: EngineFactory = SimulatedEngine,
) -> SimulationResult:
    wall_start = time.perf_counter()
    clock = VirtualClock()
    first_profile = (config.replica_profiles or (config.profile,))[0]
    # The SLO-aware policies estimate latencies from the engines' own profile (the first
    # one's, in a mixed cluster).
    scheduler = Scheduler(config.scheduler, clock, latency=LatencyModel(first_profile))
    by_id: dict[str, SimulatedEngine] = {}

    def new_engine(replica_id: str, profile: StepTimeProfile = config.profile) -> SimulatedEngine:
        engine_config = resolve_engine(config.engine, profile)
        blocks = engine_config.num_kv_blocks
        return engine_factory(replica_id, engine_config, StepTimeModel(profile), blocks)

    for i, profile in enumerate(config.replica_profiles or (config.profile,) * config.replicas):
        engine = new_engine(f"r{i}", profile)
        by_id[engine.replica_id] = engine
        scheduler.add_replica(
            engine.replica_id,
            engine.config.max_num_seqs,
            engine.kv.num_blocks,
            engine.config.block_size,
        )
    scaling = None
    if config.scheduler.autoscaling.enabled:
        startup = config.replica_startup_s
        scaling = SimAutoscaling(
            config.scheduler.autoscaling, startup, scheduler, by_id, new_engine
        )
    retired: list[SimulatedEngine] = []  # removed by autoscaling, counted in the totals

    block_size = first_profile.block_size  # one block size across the profiles (all are 16)
    arrivals = sorted(
        (to_request(item, block_size) for item in items), key=lambda r: r.arrival_time
    )
    busy: set[str] = set()
    steps: list[tuple[float, int, str, StepResult]] = []
    step_seq = 0
    finished = 0
    target = config.until_completions
    time_to_k = None
    stopped_by = "drained"
    ai, n = 0, len(arrivals)
    refused = 0  # by admission control on arrival (never held by the scheduler)
    bar = tqdm(
        total=target or n,
        unit="req",
        disable=not config.progress,
        leave=False,
        desc=f"simulate {config.scheduler.policy.name}",
    )

    while True:
        t = min(
            arrivals[ai].arrival_time if ai < n else math.inf, steps[0][0] if steps else math.inf
        )
        if scaling is not None and (t < math.inf or len(scheduler.queue)):
            t = min(t, scaling.next_event())  # the fleet changes only while work remains
        if t == math.inf:
            break
        if config.time_limit_s is not None and t > config.time_limit_s:
            clock.advance_to(config.time_limit_s)
            stopped_by = "time_limit"
            break
        clock.advance_to(t)
        while ai < n and arrivals[ai].arrival_time <= t:
            if scheduler.admit(arrivals[ai]) is not None:
                refused += 1
            ai += 1
        while steps and steps[0][0] <= t:
            _, _, replica_id, result = heapq.heappop(steps)
            busy.discard(replica_id)
            if replica_id not in by_id:
                continue  # removed mid-step: its requests moved on with the tokens reported
            ended = scheduler.apply(by_id[replica_id].events(result))
            done = sum(r.state is RequestState.FINISHED for r in ended)
            if done:
                finished += done
                bar.update(done)
        if target is not None and finished >= target:
            time_to_k = t
            stopped_by = "until_completions"
            break
        if scaling is not None:
            retired += scaling.advance(t, finished)
        for d in scheduler.schedule():
            try:
                by_id[d.replica_id].add(d)
            except ValueError as err:  # longer than the engine's max_model_len: fails alone
                scheduler.fail(d.request.request_id, str(err))
        scheduler.take_rejected()  # already FAILED; the simulator only counts them
        for end in scheduler.take_early_ends():  # preempted: each ends after its next token
            by_id[end.replica_id].end_early(end.request_id)
        for engine in by_id.values():
            if engine.replica_id in busy or not engine.has_work():
                continue
            result = engine.step()
            if result.batch_size == 0:
                continue  # nothing fits yet; a later event frees room
            busy.add(engine.replica_id)
            step_seq += 1
            heapq.heappush(steps, (t + result.duration, step_seq, engine.replica_id, result))
    bar.close()

    done_requests = [r for r in scheduler.requests() if r.state is RequestState.FINISHED]
    timings = [timing_of(r) for r in done_requests]
    failed = sum(1 for r in scheduler.requests() if r.state is RequestState.FAILED)
    unfinished = n - len(done_requests) - failed - refused
    end = clock.now() if stopped_by == "time_limit" else None
    engines = [*by_id.values(), *retired]
    if scaling is not None:
        scaling.advance(clock.now(), finished)  # count the replica-seconds to the end
        extra = {"replica_seconds": scaling.replica_seconds, "replica_timeline": scaling.timeline}
    else:
        extra = {"replica_seconds": len(engines) * clock.now()}
    if scheduler.queue.plans:  # wall time, not simulated: what the search costs its host
        extra.update(plans=scheduler.queue.plans, plan_s=scheduler.queue.plan_s)
    # From the workload's first arrival: when a run stops early, the earliest request that
    # finished may have arrived later, and throughput would be taken over a shorter window.
    start = arrivals[0].arrival_time if arrivals else None
    return SimulationResult(
        policy=config.scheduler.policy.name,
        metrics=summarize(
            timings, failed, refused, start=start, end=end, slos=config.scheduler.slo
        ),
        timings=timings,
        requests=arrivals,
        virtual_time_s=clock.now(),
        wall_time_s=time.perf_counter() - wall_start,
        engine_steps=sum(e.steps for e in engines),
        engine_preemptions=sum(e.preemptions for e in engines),
        admitted_tokens=sum(e.admitted_tokens for e in engines),
        cached_tokens=sum(e.cached_tokens for e in engines),
        recomputed_tokens=sum(e.recomputed_tokens for e in engines),
        host_loaded_blocks=sum(e.host.loaded for e in engines if e.host is not None),
        slices=scheduler.stats().slices,
        scheduler_preemptions=scheduler.stats().preemptions,
        unfinished=unfinished,
        shed=scheduler.stats().shed,
        slo_demoted=scheduler.stats().slo_demoted,
        time_to_k_s=time_to_k,
        stopped_by=stopped_by,
        extra=extra,
    )
