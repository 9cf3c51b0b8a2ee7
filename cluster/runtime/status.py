"""What the scheduler actor reports about the cluster (GET /status, `admin status`)."""

from __future__ import annotations

from dataclasses import dataclass

from cluster.rank_quality import RankQuality
from cluster.runtime.protocol import ReplicaInfo


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    replica_id: str
    alive: bool
    info: ReplicaInfo | None
    assigned: int  # requests dispatched to it or running there (the scheduler's view)
    free_kv_blocks: int  # as last reported by the replica
    num_running: int
    num_waiting: int


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

    @property
    def ready(self) -> bool:
        return any(r.alive for r in self.replicas)
