"""The scheduler's metrics (docs/metrics.md): its status as Prometheus metric families, published
through Ray's metrics API by the scheduler actor (Ray's exporter serves them as `ray_rankserve_*`)
and rendered by the ingress's GET /metrics (as `rankserve_*`)."""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cluster.request import Request
from cluster.runtime.status import ClusterStatus, EndedTotals, cluster_status

if TYPE_CHECKING:
    from cluster.runtime.fleet import ReplicaFleet
    from cluster.scheduler import Scheduler

logger = logging.getLogger(__name__)

GAUGE, COUNTER = "gauge", "counter"
PUBLISH_EVERY_S = 1.0


@dataclass(frozen=True, slots=True)
class Family:
    """One metric and its samples; a counter's `name` is without the `_total` it is exported
    with (both Ray and prometheus_client add it)."""

    name: str
    kind: str  # GAUGE or COUNTER
    help: str
    labels: tuple[str, ...] = ()
    samples: list[tuple[tuple[str, ...], float]] = field(default_factory=list)

    def add(self, value: float | None, *label_values: str) -> Family:
        """One sample; None (not known yet, e.g. tau on too few answers) is NaN."""
        self.samples.append((label_values, math.nan if value is None else float(value)))
        return self


def _counts(name: str, help: str, label: str, counts: dict[str, int]) -> Family:
    fam = Family(name, COUNTER, help, (label,))
    for key, n in sorted(counts.items()):
        fam.add(n, key)
    return fam


_REPLICA_GAUGES = (
    ("running", "Requests running in the replica's engine (as it last reported)"),
    ("waiting", "Requests waiting in the replica's engine (as it last reported)"),
    ("assigned", "Requests the scheduler has dispatched to the replica, not yet ended"),
    ("kv_usage", "Fraction of the replica's KV cache blocks in use (as it last reported)"),
    ("up", "1 while the replica is up, 0 while it is down or starting"),
)


def scheduler_families(s: ClusterStatus) -> list[Family]:
    queue = Family(
        "rankserve_queue_depth", GAUGE, "Requests in the global queue", ("policy", "slo")
    )
    for slo, n in s.queued_by_slo.items():
        queue.add(n, s.policy, slo)
    in_flight = Family("rankserve_requests_in_flight", GAUGE, "Requests by state", ("state",))
    for state in ("queued", "dispatched", "running"):
        in_flight.add(getattr(s, state), state)
    per_replica = [
        Family(f"rankserve_replica_{name}", GAUGE, help, ("replica",))
        for name, help in _REPLICA_GAUGES
    ]
    for r in s.replicas:
        total = r.info.total_kv_blocks if r.info else 0
        usage = 1.0 - r.free_kv_blocks / total if total and r.alive else 0.0
        values = (r.num_running, r.num_waiting, r.assigned, usage, int(r.alive))
        for fam, value in zip(per_replica, values, strict=True):
            fam.add(value, r.replica_id)
    quality, slo = s.rank_quality, s.slo
    return [
        queue,
        in_flight,
        Family("rankserve_requests_finished", COUNTER, "Requests finished").add(s.finished),
        Family("rankserve_dispatches", COUNTER, "Dispatches to a replica").add(s.dispatches),
        Family("rankserve_slices", COUNTER, "Dispatches ended at their slice").add(s.slices),
        Family(
            "rankserve_preemptions", COUNTER, "Engine preemptions (a KV cache that could not grow)"
        ).add(s.preemptions),
        Family(
            "rankserve_scheduler_preemptions",
            COUNTER,
            "Dispatches the scheduler ended early to give their slot to a request ranked ahead",
        ).add(s.scheduler_preemptions),
        Family(
            "rankserve_preemption_retained_share",
            GAUGE,
            "Share of a preempted context its resume is expected to find cached (learned)",
        ).add(s.preemption_retained_share),
        Family(
            "rankserve_preemption_resume_wait_seconds",
            GAUGE,
            "Seconds preempted requests waited to resume (learned; NaN before any)",
        ).add(s.preemption_resume_wait_s),
        Family(
            "rankserve_prefix_cached_tokens",
            COUNTER,
            "Context tokens the engines found in their prefix caches as dispatches started",
        ).add(s.cached_tokens),
        Family("rankserve_scheduling_rounds", COUNTER, "Scheduling rounds").add(s.rounds),
        _counts("rankserve_request_failures", "Requests failed, by reason", "reason", s.failures),
        _counts(
            "rankserve_admission_rejections",
            "Requests refused or dropped from the queue by admission control, by reason",
            "reason",
            s.shed,
        ),
        Family(
            "rankserve_slo_demotions",
            COUNTER,
            "Requests admitted in the best-effort SLO class, their own being out of reach",
        ).add(s.slo_demoted),
        *per_replica,
        Family(
            "rankserve_rank_quality_kendall_tau",
            GAUGE,
            "Kendall tau-b of the predictor's scores vs the produced lengths (recent answers)",
        ).add(quality.kendall_tau),
        Family("rankserve_rank_quality_samples", GAUGE, "Answers in the rank quality window").add(
            quality.samples
        ),
        Family("rankserve_predicted_length_ratio", GAUGE, "Median predicted / produced tokens").add(
            quality.median_length_ratio
        ),
        Family(
            "rankserve_slo_attainment", GAUGE, "Share of the finished requests that met their SLO"
        ).add(slo.attainment),
        Family("rankserve_goodput_rps", GAUGE, "Requests meeting their SLO per second").add(
            slo.goodput_rps
        ),
    ]


class RayPublisher:
    """Families into Ray's metrics API (ray.util.metrics). Counters go in by their growth since
    the previous publish (a Ray counter only adds)."""

    def __init__(self) -> None:
        self._metrics: dict[str, Any] = {}
        self._last: dict[tuple[str, tuple[str, ...]], float] = {}

    def publish(self, families: list[Family]) -> None:
        from ray.util import metrics

        for fam in families:
            metric = self._metrics.get(fam.name)
            if metric is None:
                kind = metrics.Gauge if fam.kind == GAUGE else metrics.Counter
                metric = self._metrics[fam.name] = kind(fam.name, fam.help, fam.labels)
            for values, value in fam.samples:
                tags = dict(zip(fam.labels, values, strict=True))
                if fam.kind == GAUGE:
                    metric.set(None if math.isnan(value) else value, tags)
                    continue
                grown = value - self._last.get((fam.name, values), 0.0)
                if grown > 0:
                    metric.inc(grown, tags)
                self._last[(fam.name, values)] = value


class SchedulerMetrics:
    """The scheduler actor's part: it keeps the totals of the requests that ended, answers the
    status with them, and publishes to Ray every PUBLISH_EVERY_S from a task of its own (created
    on the actor's event loop)."""

    def __init__(self, core: Scheduler, fleet: ReplicaFleet) -> None:
        self._core, self._fleet = core, fleet
        self._ended = EndedTotals()
        self._ray = RayPublisher()
        self._task = asyncio.get_running_loop().create_task(self._publish_loop())

    def ended(self, request: Request) -> None:
        self._ended.record(request)

    def status(self) -> ClusterStatus:
        return cluster_status(self._core, self._fleet, self._ended)

    async def _publish_loop(self) -> None:
        while True:
            await asyncio.sleep(PUBLISH_EVERY_S)
            try:
                self._ray.publish(scheduler_families(self.status()))
            except Exception:  # metrics never take the scheduler down; said once, then off
                logger.exception("publishing the scheduler's metrics to Ray failed; stopped")
                return
