"""The scheduler's picture of the engine replicas: what each reports about itself, corrected for
the work dispatched to it since."""

from __future__ import annotations

from dataclasses import dataclass, field

from cluster.numbers import ceil_div


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
    """One replica as the scheduler sees it: its last report, corrected for the work dispatched
    to it since (whose blocks the report cannot show yet)."""

    replica_id: str
    max_num_seqs: int
    total_kv_blocks: int
    block_size: int
    reported_free_blocks: int
    assigned: set[str] = field(default_factory=set)  # request ids dispatched or running here
    pending_blocks: dict[str, int] = field(default_factory=dict)  # dispatched, not yet running
    pending_total: int = 0
    # Most requests the policy lets it hold at once (the `slo` policy's concurrency limit);
    # None: max_num_seqs.
    slot_limit: int | None = None

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
        return ceil_div(tokens, self.block_size)

    def has_slot(self, max_engine_waiting: int) -> bool:
        if self.slot_limit is not None and len(self.assigned) >= self.slot_limit:
            return False
        return len(self.assigned) < self.max_num_seqs + max_engine_waiting

    def has_room(self, tokens: int, headroom_fraction: float, max_engine_waiting: int) -> bool:
        """A slot, and free blocks for this context with `headroom_fraction` of the cache
        left over."""
        free_after = self.free_blocks - self.blocks_for(tokens)
        return (
            self.has_slot(max_engine_waiting)
            and free_after >= headroom_fraction * self.total_kv_blocks
        )

    def can_ever_hold(self, tokens: int, headroom_fraction: float) -> bool:
        """Whether this replica's cache, empty, could hold this context and its next token."""
        return self.blocks_for(tokens + 1) <= (1 - headroom_fraction) * self.total_kv_blocks


class ReplicaSet:
    """The replicas the scheduler dispatches to, and which of them drain: take no new request,
    while what runs there finishes, until they are removed."""

    def __init__(self) -> None:
        self._views: dict[str, ReplicaView] = {}
        self._draining: set[str] = set()

    def add(
        self, replica_id: str, max_num_seqs: int, total_kv_blocks: int, block_size: int
    ) -> None:
        if replica_id in self._views:
            raise ValueError(f"replica {replica_id} is already registered")
        self._views[replica_id] = ReplicaView(
            replica_id, max_num_seqs, total_kv_blocks, block_size, total_kv_blocks
        )

    def remove(self, replica_id: str) -> ReplicaView:
        self._draining.discard(replica_id)
        return self._views.pop(replica_id)

    def __contains__(self, replica_id: object) -> bool:
        return replica_id in self._views

    def __getitem__(self, replica_id: str) -> ReplicaView:
        return self._views[replica_id]

    def get(self, replica_id: str | None) -> ReplicaView | None:
        return self._views.get(replica_id)

    @property
    def ids(self) -> list[str]:
        return list(self._views)

    def drain(self, replica_id: str) -> None:
        if replica_id not in self._views:
            raise ValueError(f"unknown replica {replica_id}")
        self._draining.add(replica_id)

    def undrain(self, replica_id: str) -> None:
        self._draining.discard(replica_id)

    @property
    def draining(self) -> list[str]:
        return [r for r in self._views if r in self._draining]

    def serving(self) -> list[ReplicaView]:
        """The replicas that take new requests."""
        return [v for v in self._views.values() if v.replica_id not in self._draining]

    def ongoing(self) -> int:
        """Requests dispatched to or running on the serving replicas."""
        return sum(len(v.assigned) for v in self.serving())
