"""What the scheduler actor reports about the cluster (GET /status, `admin status`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from cluster.rank_quality import RankQuality
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

    @property
    def ready(self) -> bool:
        return any(r.alive for r in self.replicas)


def cluster_status(core: Scheduler, fleet: ReplicaFleet) -> ClusterStatus:
    stats = core.stats()
    assigned: dict[str, int] = {}
    for request in core.requests():
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
    )
