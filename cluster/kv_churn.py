"""How long a replica's prefix cache keeps the blocks of a request paused there. A prefix cache
evicts the blocks freed first (vLLM's free-block queue is LRU), and a paused request's blocks go
behind those free at that moment: they last until as many more have been taken, by the requests
dispatched to the replica since (each its context and expected answer, which it fills as it
runs). At the rate those came over the last `window_s` seconds, that takes
free blocks x block size / rate seconds."""

from __future__ import annotations

from collections import deque

from cluster.replicas import ReplicaView


class KvChurn:
    def __init__(self, window_s: float = 60.0) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be > 0")
        self.window_s = window_s
        self._taken: dict[str, deque[tuple[float, float]]] = {}  # replica -> (time, tokens)
        self._totals: dict[str, float] = {}

    def dispatched(self, replica_id: str, tokens: float, now: float) -> None:
        """A request that will take `tokens` of KV went to the replica at `now`."""
        self._taken.setdefault(replica_id, deque()).append((now, tokens))
        self._totals[replica_id] = self._totals.get(replica_id, 0.0) + tokens
        self._trim(replica_id, now)

    def tokens_per_s(self, replica_id: str, now: float) -> float:
        """KV tokens the replica was given per second over the window."""
        if replica_id not in self._taken:
            return 0.0
        self._trim(replica_id, now)
        return self._totals[replica_id] / self.window_s

    def keeps_for_s(self, view: ReplicaView, now: float) -> float:
        """Seconds a request paused on `view` now keeps its blocks there (inf when nothing
        came to it lately)."""
        rate = self.tokens_per_s(view.replica_id, now)
        return max(0, view.free_blocks) * view.block_size / rate if rate > 0 else float("inf")

    def _trim(self, replica_id: str, now: float) -> None:
        taken = self._taken[replica_id]
        while taken and taken[0][0] < now - self.window_s:
            self._totals[replica_id] -= taken.popleft()[1]
