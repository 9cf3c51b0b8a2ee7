"""Serving metrics as the papers report them, from per-request timestamps. The simulator and
the live benchmark both compute their figures here."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

from cluster.config import SLOConfig
from cluster.request import Request, RequestState


@dataclass(frozen=True, slots=True)
class RequestTiming:
    """What one completed request looked like from the client's side (seconds)."""

    arrival: float
    first_token: float
    finish: float
    output_tokens: int
    max_token_gap: float = 0.0
    preemptions: int = 0
    slo: str | None = None  # the request's SLO class (None: the default class)

    @property
    def e2e(self) -> float:
        return self.finish - self.arrival

    @property
    def ttft(self) -> float:
        return self.first_token - self.arrival

    @property
    def tpot(self) -> float | None:
        if self.output_tokens < 2:
            return None
        return (self.finish - self.first_token) / (self.output_tokens - 1)

    @property
    def per_token(self) -> float:
        return self.e2e / max(1, self.output_tokens)

    @property
    def max_wait(self) -> float:
        """The LTR paper's fairness metric: the longest the client saw nothing arrive."""
        return max(self.ttft, self.max_token_gap)


def timing_of(request: Request) -> RequestTiming:
    if request.state is not RequestState.FINISHED:
        raise ValueError(f"{request.request_id} has not finished")
    return RequestTiming(
        arrival=request.arrival_time,
        # An answer that ended with no token (a stop at once) reached its client at its end.
        first_token=request.first_token_time
        if request.first_token_time is not None
        else request.finish_time,
        finish=request.finish_time,
        output_tokens=request.generated,
        max_token_gap=request.max_token_gap,
        preemptions=request.num_preemptions,
        slo=request.slo,
    )


def meets_slo(timing: RequestTiming, slos: SLOConfig) -> bool:
    return slos.get(timing.slo).met(timing.ttft, timing.tpot, timing.e2e)


@dataclass(frozen=True, slots=True)
class ClassAttainment:
    requests: int  # completed requests of the class
    met: int
    attainment: float  # met / requests (NaN with none)


@dataclass(frozen=True, slots=True)
class Distribution:
    mean: float
    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Iterable[float]) -> Distribution:
        a = np.fromiter(values, dtype=float)
        if a.size == 0:
            nan = float("nan")
            return cls(nan, nan, nan, nan, nan)
        p50, p90, p99 = np.percentile(a, [50, 90, 99])
        return cls(float(a.mean()), float(p50), float(p90), float(p99), float(a.max()))


@dataclass(frozen=True, slots=True)
class ServingMetrics:
    completions: int
    failed: int
    duration_s: float  # first arrival to last completion
    throughput_rps: float
    throughput_tps: float
    e2e_latency_s: Distribution
    per_token_latency_s: Distribution
    ttft_s: Distribution
    tpot_s: Distribution
    max_wait_s: Distribution
    preemptions: int
    # Huang et al.'s measure: the share of requests that met their class's SLO, over the
    # completed and failed ones (a failure meets nothing); goodput: those met per second.
    slo_attainment: float
    goodput_rps: float
    slo_classes: dict[str, ClassAttainment]

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(
    timings: list[RequestTiming],
    failed: int = 0,
    refused: int = 0,
    start: float | None = None,
    end: float | None = None,
    slos: SLOConfig | None = None,
) -> ServingMetrics:
    if timings:
        start = min(t.arrival for t in timings) if start is None else start
        end = max(t.finish for t in timings) if end is None else end
    duration = max(0.0, (end or 0.0) - (start or 0.0))
    tokens = sum(t.output_tokens for t in timings)
    slos = slos if slos is not None else SLOConfig()
    met = [meets_slo(t, slos) for t in timings]
    classes = {}
    for name in slos.names:
        mine = [m for t, m in zip(timings, met, strict=True) if slos.get(t.slo).name == name]
        if mine:
            classes[name] = ClassAttainment(len(mine), sum(mine), sum(mine) / len(mine))
    judged = len(timings) + failed + refused  # a request not served met nothing
    return ServingMetrics(
        completions=len(timings),
        failed=failed,
        duration_s=duration,
        throughput_rps=len(timings) / duration if duration > 0 else 0.0,
        throughput_tps=tokens / duration if duration > 0 else 0.0,
        e2e_latency_s=Distribution.of(t.e2e for t in timings),
        per_token_latency_s=Distribution.of(t.per_token for t in timings),
        ttft_s=Distribution.of(t.ttft for t in timings),
        tpot_s=Distribution.of(x for t in timings if (x := t.tpot) is not None),
        max_wait_s=Distribution.of(t.max_wait for t in timings),
        preemptions=sum(t.preemptions for t in timings),
        slo_attainment=sum(met) / judged if judged else float("nan"),
        goodput_rps=sum(met) / duration if duration > 0 else 0.0,
        slo_classes=classes,
    )


@dataclass(frozen=True, slots=True)
class SchedulerStats:
    queued: int
    dispatched: int
    running: int
    finished: int
    failed: int
    rounds: int
    slices: int
    shed: dict[str, int]  # refused or dropped from the queue, by ShedReason value
    preemptions: int = 0  # dispatches the scheduler ended early (cluster.preemption)
    # Share of a preempted context its resume is expected to find cached (cluster.swaps).
    retained_share: float = 1.0
    # Seconds from a preemption to its victim's next dispatch, learned (None before any).
    resume_wait_s: float | None = None
    slo_demoted: int = 0  # put in the best-effort SLO class on arrival (cluster.slo_admission)

    @property
    def in_flight(self) -> int:
        return self.queued + self.dispatched + self.running
