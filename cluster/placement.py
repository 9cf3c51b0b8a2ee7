"""Which replica gets a request: one with headroom (a running slot and enough free KV blocks),
the least KV-loaded first, so that KV pressure stays balanced across the cluster. Also the
baseline it is measured against, Ray Serve's power-of-two-choices routing."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ReplicaLoad:
    """What a replica reports about itself."""

    replica_id: str
    num_running: int
    num_waiting: int
    free_kv_blocks: int
    total_kv_blocks: int


@dataclass(slots=True)
class ReplicaView:
    """The scheduler's picture of one replica: its last report, corrected for the work
    dispatched to it since (whose blocks the report cannot show yet)."""

    replica_id: str
    max_num_seqs: int
    total_kv_blocks: int
    block_size: int
    reported_free_blocks: int
    assigned: set[str] = field(default_factory=set)  # request ids dispatched or running here
    pending_blocks: dict[str, int] = field(default_factory=dict)  # dispatched, not yet running
    pending_total: int = 0

    @property
    def free_blocks(self) -> int:
        return self.reported_free_blocks - self.pending_total

    def assign(self, request_id: str, blocks: int) -> None:
        self.assigned.add(request_id)
        self.pending_blocks[request_id] = blocks
        self.pending_total += blocks

    def started(self, request_id: str) -> None:
        """The replica now holds the request's blocks itself: its reports will show them."""
        self.pending_total -= self.pending_blocks.pop(request_id, 0)

    def release(self, request_id: str) -> None:
        self.started(request_id)
        self.assigned.discard(request_id)

    @property
    def kv_load(self) -> float:
        return 1.0 - self.free_blocks / self.total_kv_blocks

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)


def choose_replica(
    replicas: list[ReplicaView], tokens: int, headroom_fraction: float, max_engine_waiting: int
) -> ReplicaView | None:
    """The least KV-loaded replica that can take a request whose prompt (plus any generated
    prefix) is `tokens` long, or None when no replica has room for it."""
    best, best_free = None, -1.0
    for view in replicas:
        if len(view.assigned) >= view.max_num_seqs + max_engine_waiting:
            continue
        free_after = view.free_blocks - view.blocks_for(tokens)
        if free_after < headroom_fraction * view.total_kv_blocks:
            continue
        free_fraction = view.free_blocks / view.total_kv_blocks
        if free_fraction > best_free:
            best, best_free = view, free_fraction
    return best


def can_ever_hold(view: ReplicaView, tokens: int, headroom_fraction: float) -> bool:
    """Whether the replica's cache, empty, could hold this context and its next token."""
    return view.blocks_for(tokens + 1) <= (1 - headroom_fraction) * view.total_kv_blocks


def has_any_slot(replicas: list[ReplicaView], max_engine_waiting: int) -> bool:
    return any(len(v.assigned) < v.max_num_seqs + max_engine_waiting for v in replicas)


def choose_power_of_two(
    replicas: list[ReplicaView], tokens: int, headroom_fraction: float, rng: random.Random
) -> ReplicaView | None:
    """Of two replicas drawn at random, the one with fewer requests assigned (running or queued
    there): Ray Serve's default. No headroom check: the replica queues what it cannot run yet.
    None when no replica's cache could ever hold `tokens`."""
    usable = [v for v in replicas if can_ever_hold(v, tokens, headroom_fraction)]
    if not usable:
        return None
    picked = rng.sample(usable, min(2, len(usable)))
    return min(picked, key=lambda v: len(v.assigned))
