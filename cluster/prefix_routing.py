"""Prefix-cache-aware placement: send a request where its prefix's KV blocks are likely cached
(cluster.prefix_index), so that the replica skips their prefill.

`prefix_aware` is rankserve's: the global queue's routing (strict policy order; a replica takes
a request only with a free slot and KV headroom after it, as `global`), choosing among the
replicas with room by a score that weighs the expected cache hit against load, as llm-d's
scorers do (prefix : queue : KV about 2 : 2 : 1 there):

    prefix_weight * (context tokens cached there - prefill tokens queued there) / context tokens
    + kv_weight * (free KV fraction) + queue_weight * (1 - requests held / slots)

The prefix term is the request's time to first token there, in units of its own prefill: the
prefill it would wait for (what it placed there and is not through its prefill yet, less what
each of those found cached, as estimated when placed) plus its own uncached part. So a replica
whose cache holds the prefix but whose engine is busy prefilling others loses to an idle one
that must recompute it. With no hit and no prefill queued anywhere it is `global` (KV
balance). A request resumed after a slice end or a preemption finds its own generated blocks,
as well as its prompt's, on the replica it ran on, so it goes back there when that one has
room: it continues where its KV is.

`prefix_affinity` is the baseline modelled on Ray Serve LLM's PrefixCacheAffinityRouter in its
power-of-two mode (replica queues, no headroom check): when the replicas' queue lengths differ
by at most `imbalanced_threshold`, the replicas with the longest prefix match, if the match
covers at least `match_rate_threshold` of the prompt, else the replicas that hold the least;
the one with the shortest queue of those. When imbalanced, power of two. It remembers only
prompts, and never forgets (Ray's default: no eviction). Its match is in KV blocks where Ray's
is in characters of prompt text.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cluster.prefix_blocks import BlockKey, block_keys
from cluster.prefix_index import PrefixIndex
from cluster.replicas import ReplicaView
from cluster.request import Request

if TYPE_CHECKING:
    from cluster.config import SchedulerConfig


class _Keys:
    """A request's block keys, per block size (replicas may differ), computed once per call."""

    def __init__(self, request: Request, tokens: int) -> None:
        self.request, self.tokens = request, tokens
        self._by_size: dict[int, list[BlockKey]] = {}

    def __call__(self, block_size: int) -> list[BlockKey]:
        if block_size not in self._by_size:
            self._by_size[block_size] = block_keys(self.request, self.tokens, block_size)
        return self._by_size[block_size]


@dataclass(slots=True)
class _Prefill:
    """A request placed on a replica, until the first token of that dispatch."""

    request: Request
    replica_id: str
    dispatch: int  # the request's num_dispatches once dispatched there
    uncached_tokens: int

    def pending(self) -> bool:
        r = self.request
        return (
            r.replica_id == self.replica_id
            and r.num_dispatches == self.dispatch
            and r.generated == r.dispatch_start_tokens
            and not r.state.is_terminal
        )


class PrefixAwareRouting:
    def __init__(self, config: SchedulerConfig) -> None:
        self.headroom = config.kv_headroom_fraction
        self.max_engine_waiting = config.max_engine_waiting
        self.weights = config.prefix
        self.index = PrefixIndex()
        self._prefills: list[_Prefill] = []
        # Per replica, prefill tokens of the requests placed there that have no first token yet
        # (each less what it was expected to find cached): recounted once a round, as only
        # engine reports between rounds end a prefill, and added to by each placement.
        self._queued: dict[str, int] = {}

    def has_room(self, replicas: list[ReplicaView]) -> bool:
        self.index.retain(v.replica_id for v in replicas)
        self._prefills = [p for p in self._prefills if p.pending()]
        self._queued = {}
        for p in self._prefills:
            self._queued[p.replica_id] = self._queued.get(p.replica_id, 0) + p.uncached_tokens
        return any(v.has_slot(self.max_engine_waiting) for v in replicas)

    def fits(self, view: ReplicaView, request: Request) -> bool:
        return view.has_room(request.context, self.headroom, self.max_engine_waiting)

    def score(
        self, view: ReplicaView, cached_tokens: int, queued_tokens: int, tokens: int
    ) -> float:
        w = self.weights
        slots = view.max_num_seqs + self.max_engine_waiting
        if view.slot_limit is not None:
            slots = min(slots, view.slot_limit)
        gain = (cached_tokens - queued_tokens) / max(1, tokens)
        free = view.free_blocks / view.total_kv_blocks
        idle = 1.0 - len(view.assigned) / max(1, slots)
        return w.prefix_weight * gain + w.kv_weight * free + w.queue_weight * idle

    def choose(self, replicas: list[ReplicaView], request: Request) -> ReplicaView | None:
        tokens = request.context
        keys = _Keys(request, tokens)
        queued = self._queued
        best, best_score, best_cached = None, float("-inf"), 0
        for view in replicas:
            if not self.fits(view, request):
                continue
            cached = self.index.matched(view.replica_id, keys(view.block_size)) * view.block_size
            score = self.score(view, cached, queued.get(view.replica_id, 0), tokens)
            if score > best_score:
                best, best_score, best_cached = view, score, cached
        if best is not None:  # the scheduler dispatches it there
            self.index.record(best.replica_id, keys(best.block_size), best.total_kv_blocks)
            uncached = tokens - best_cached
            self._prefills.append(
                _Prefill(request, best.replica_id, request.num_dispatches + 1, uncached)
            )
            queued[best.replica_id] = queued.get(best.replica_id, 0) + uncached
        return best


class PrefixAffinityRouting:
    def __init__(self, config: SchedulerConfig) -> None:
        self.headroom = config.kv_headroom_fraction
        self.imbalanced_threshold = config.prefix.imbalanced_threshold
        self.match_rate_threshold = config.prefix.match_rate_threshold
        self.rng = random.Random(config.routing_seed)
        self.index = PrefixIndex()

    def has_room(self, replicas: list[ReplicaView]) -> bool:
        self.index.retain(v.replica_id for v in replicas)
        return True

    def fits(self, view: ReplicaView, request: Request) -> bool:
        return view.can_ever_hold(request.context, self.headroom)  # the replica queues it

    def choose(self, replicas: list[ReplicaView], request: Request) -> ReplicaView | None:
        usable = [v for v in replicas if self.fits(v, request)]
        if not usable:
            return None
        keys = _Keys(request, request.prompt_tokens)
        queues = [len(v.assigned) for v in usable]
        if max(queues) - min(queues) > self.imbalanced_threshold:
            candidates = self.rng.sample(usable, min(2, len(usable)))
        else:
            hit = [
                self.index.matched(v.replica_id, keys(v.block_size)) * v.block_size for v in usable
            ]
            top = max(hit)
            if top > 0 and top >= self.match_rate_threshold * request.prompt_tokens:
                candidates = [v for v, h in zip(usable, hit, strict=True) if h == top]
            else:
                least = min(self.index.size(v.replica_id) for v in usable)
                candidates = [v for v in usable if self.index.size(v.replica_id) == least]
            self.rng.shuffle(candidates)  # ties of queue length: at random
        chosen = min(candidates, key=lambda v: len(v.assigned))
        self.index.record(chosen.replica_id, keys(chosen.block_size), None)
        return chosen
