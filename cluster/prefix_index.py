"""The scheduler's estimate of which KV blocks each replica's prefix cache holds, from what it
sent there: no engine reports its cache's contents, but every block a replica computed came
from a request the scheduler placed on it.

Per replica, an LRU of block keys (cluster.prefix_blocks) bounded by the replica's KV size: a
placed request's context blocks (its prompt's, and those it generated before this dispatch),
touched head last so that, as in vLLM's free queue, a prefix's tail is forgotten before its
head. Because a request's generated blocks are keyed by the request, a request that comes back
(a slice end, a preemption) finds the most of itself on the replica it last ran on.

An estimate: it does not see what an engine evicts early under its own pressure, nor what the
request generates during the dispatch (the next dispatch's context covers that). `capacity`
None keeps everything (a router that never forgets, as Ray Serve's prefix tree by default).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from cluster.prefix_blocks import BlockKey


class PrefixIndex:
    def __init__(self) -> None:
        self._blocks: dict[str, OrderedDict[BlockKey, None]] = {}

    def matched(self, replica_id: str, keys: Iterable[BlockKey]) -> int:
        """How many of `keys`, from the first, the replica is thought to hold."""
        held = self._blocks.get(replica_id)
        if not held:
            return 0
        n = 0
        for key in keys:
            if key not in held:
                break
            n += 1
        return n

    def record(self, replica_id: str, keys: list[BlockKey], capacity: int | None) -> None:
        """The replica computed (or reused) these blocks just now; keep at most `capacity`
        blocks, the least recently used forgotten first."""
        held = self._blocks.setdefault(replica_id, OrderedDict())
        for key in reversed(keys):  # the head is touched last: the last to be forgotten
            held[key] = None
            held.move_to_end(key)
        if capacity is not None:
            while len(held) > capacity:
                held.popitem(last=False)

    def size(self, replica_id: str) -> int:
        """Blocks the replica is thought to hold."""
        return len(self._blocks.get(replica_id, ()))

    def retain(self, replica_ids: Iterable[str]) -> None:
        """Forget the replicas not among these (removed from the cluster)."""
        keep = set(replica_ids)
        for gone in [r for r in self._blocks if r not in keep]:
            del self._blocks[gone]
