"""What the scheduler actor reports about the cluster (GET /status, `admin status`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cluster.rank_quality import RankQuality
from cluster.request import Request, RequestState
from cluster.runtime.protocol import ReplicaInfo
from cluster.scheduler import Scheduler
from cluster.slo_attainment import AttainmentSnapshot

if TYPE_CHECKING:
    from cluster.runtime.fleet import ReplicaFleet


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    replica_id: str
    alive: bool
    info: ReplicaInfo | None
    assigned: int  # requests dispatched to it or running there (the scheduler's view)
    free_kv_blocks: int  # as last reported by the replica
    num_running: int
    num_waiting: int
    node_id: str  # the Ray node it runs on ("" while it is not up)


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    policy: str
    queued: int
    dispatched: int
    running: int
    finished: int
    failed: int
    rounds: int
    replicas: list[ReplicaStatus]
    rank_quality: RankQuality
    shed: dict[str, int]  # requests refused or dropped by admission control, by reason
    slo: AttainmentSnapshot  # SLO attainment and goodput of the requests finished so far
    # Counts over this scheduler's life (it restarts them when it restarts), for the metrics.
    slices: int  # dispatches that ended at their slice's budget
    dispatches: int
    preemptions: int
    failures: dict[str, int]  # failed requests by `failure_reason`
    queued_by_slo: dict[str, int]  # the queue, by SLO class
    slo_demoted: int = 0  # admitted in the best-effort SLO class (cluster.slo_admission)
    # Dispatches the scheduler ended early (cluster.preemption), unlike `preemptions` above,
    # which counts the engines' own (a KV cache that could not grow).
    scheduler_preemptions: int = 0
    # In-flight requests the scheduler has preempted: request id -> times.
    preempted: dict[str, int] = field(default_factory=dict)
    # Context tokens the engines found in their prefix caches as dispatches started.
    cached_tokens: int = 0
    # Share of a preempted request's context that the preemption cost model expects its
    # resume to find cached: learned from the resumes so far (cluster.swaps).
    preemption_retained_share: float = 1.0
    # Seconds preempted requests waited to resume (a moving average; None before any): their
    # context counts as kept while their replica keeps blocks longer than that.
    preemption_resume_wait_s: float | None = None

    @property
    def ready(self) -> bool:
        return any(r.alive for r in self.replicas)


@dataclass(slots=True)
class EndedTotals:
    """What the requests the core forgot (it keeps only those in flight) had added up to."""

    dispatches: int = 0
    preemptions: int = 0
    scheduler_preemptions: int = 0
    cached_tokens: int = 0
    failures: Counter[str] = field(default_factory=Counter)

    def record(self, request: Request) -> None:
        self.dispatches += request.num_dispatches
        self.preemptions += request.num_preemptions
        self.scheduler_preemptions += request.scheduler_preemptions
        self.cached_tokens += request.cached_tokens
        if request.state is RequestState.FAILED:
            self.failures[failure_reason(request)] += 1


def failure_reason(request: Request) -> str:
    """A failed request's reason, one of a few values (its error text is free-form)."""
    error = request.error or ""
    if request.refusal is not None:
        return "dropped_by_admission"  # from the queue; see `shed` for the admission reason
    if error in ("aborted", "client gone"):
        return error.replace(" ", "_")
    if "do not fit in any replica" in error:
        return "context_too_long"
    return "engine_error"  # what a replica reported failed


def cluster_status(
    core: Scheduler, fleet: ReplicaFleet, ended: EndedTotals | None = None
) -> ClusterStatus:
    ended = ended or EndedTotals()
    stats = core.stats()
    live = core.requests()
    slos = core.config.slo
    queued_by_slo = dict.fromkeys(slos.names, 0)
    for request in live:
        if request.state is RequestState.QUEUED:
            queued_by_slo[request.slo if request.slo in queued_by_slo else slos.default] += 1
    assigned: dict[str, int] = {}
    for request in live:
        if request.replica_id is not None and not request.state.is_terminal:
            assigned[request.replica_id] = assigned.get(request.replica_id, 0) + 1
    replicas = []
    for replica_id in fleet.specs:
        load = fleet.loads.get(replica_id)
        replicas.append(
            ReplicaStatus(
                replica_id,
                alive=replica_id in fleet.handles,
                info=fleet.infos.get(replica_id),
                assigned=assigned.get(replica_id, 0),
                free_kv_blocks=load.free_kv_blocks if load else 0,
                num_running=load.num_running if load else 0,
                num_waiting=load.num_waiting if load else 0,
                node_id=fleet.nodes.get(replica_id, ""),
            )
        )
    return ClusterStatus(
        core.config.policy.name,
        stats.queued,
        stats.dispatched,
        stats.running,
        stats.finished,
        stats.failed,
        stats.rounds,
        replicas,
        core.rank_quality.summary(),
        stats.shed,
        core.slo_attainment.snapshot(),
        stats.slices,
        ended.dispatches + sum(r.num_dispatches for r in live),
        ended.preemptions + sum(r.num_preemptions for r in live),
        dict(ended.failures),
        queued_by_slo,
        stats.slo_demoted,
        ended.scheduler_preemptions + sum(r.scheduler_preemptions for r in live),
        {r.request_id: r.scheduler_preemptions for r in live if r.scheduler_preemptions},
        ended.cached_tokens + sum(r.cached_tokens for r in live),
        stats.retained_share,
        stats.resume_wait_s,
    )
