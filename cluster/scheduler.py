"""The cluster-wide scheduler: one global queue in policy order, dispatched to replicas with
headroom. Plain Python driven by events and an injected clock; the live scheduler actor and the
simulator both host this same class."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

from cluster.clock import Clock
from cluster.config import SchedulerConfig
from cluster.placement import (
    ReplicaLoad,
    ReplicaView,
    can_ever_hold,
    choose_power_of_two,
    choose_replica,
    has_any_slot,
)
from cluster.policies import make_queue
from cluster.rank_quality import RankQualityMonitor
from cluster.request import Request, RequestState

_INT64_MAX = 2**62


@dataclass(frozen=True, slots=True)
class Dispatch:
    """A decision: run `request` on `replica_id` for at most `max_new_tokens` tokens."""

    request: Request
    replica_id: str
    priority: int  # vLLM's priority (lower first): the global order, carried into the engine
    max_new_tokens: int


@dataclass(frozen=True, slots=True)
class SchedulerStats:
    queued: int
    dispatched: int
    running: int
    finished: int
    failed: int
    rounds: int
    slices: int


def engine_priority(value: float) -> int:
    """vLLM takes an integer priority; keep three decimals of the policy's key."""
    return max(-_INT64_MAX, min(_INT64_MAX, round(value * 1000)))


class UnknownRequest(KeyError):
    pass


class Scheduler:
    def __init__(self, config: SchedulerConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.queue = make_queue(config.policy)
        self._replicas: dict[str, ReplicaView] = {}
        self._requests: dict[str, Request] = {}
        self._seq = itertools.count()
        self._finished = 0
        self._failed = 0
        self._slices = 0
        self._rejected: list[Request] = []
        self.rank_quality = RankQualityMonitor(config.rank_quality_window)
        self._routing_rng = random.Random(config.routing_seed)

    # ---- replicas -------------------------------------------------------------------------

    def add_replica(
        self, replica_id: str, max_num_seqs: int, total_kv_blocks: int, block_size: int
    ) -> None:
        if replica_id in self._replicas:
            raise ValueError(f"replica {replica_id} is already registered")
        self._replicas[replica_id] = ReplicaView(
            replica_id, max_num_seqs, total_kv_blocks, block_size, total_kv_blocks
        )

    def remove_replica(self, replica_id: str) -> list[Request]:
        """A replica is gone: its requests return to the queue with the tokens they have, and
        will continue elsewhere."""
        view = self._replicas.pop(replica_id)
        returned = []
        for request_id in sorted(view.assigned):
            request = self._requests[request_id]
            self._requeue(request)
            returned.append(request)
        return returned

    def update_load(self, load: ReplicaLoad) -> None:
        view = self._replicas[load.replica_id]
        view.reported_free_blocks = load.free_kv_blocks
        view.total_kv_blocks = load.total_kv_blocks

    @property
    def replica_ids(self) -> list[str]:
        return list(self._replicas)

    # ---- requests -------------------------------------------------------------------------

    def submit(self, request: Request) -> None:
        if request.request_id in self._requests:
            raise ValueError(f"duplicate request id {request.request_id}")
        if request.max_tokens < 1:
            raise ValueError(f"{request.request_id}: max_tokens must be >= 1")
        request.seq = next(self._seq)
        request.state = RequestState.QUEUED
        self._requests[request.request_id] = request
        self.queue.add(request, self.clock.now())

    def get(self, request_id: str) -> Request:
        try:
            return self._requests[request_id]
        except KeyError:
            raise UnknownRequest(request_id) from None

    def schedule(self) -> list[Dispatch]:
        """One round: walk the queue in policy order and place each request on the least
        KV-loaded replica with room, until none has room for the next one. Strict order: a
        request that fits nowhere now stops the round rather than being overtaken; one that
        could never fit on any replica fails (see `take_rejected`) instead of stalling all.
        With power_of_two routing every queued request is sent at once (see config.ROUTINGS)."""
        replicas = list(self._replicas.values())
        config = self.config
        routed = config.routing == "power_of_two"  # the baseline: replicas queue for themselves
        if not self.queue or not replicas:
            return []
        if not routed and not has_any_slot(replicas, config.max_engine_waiting):
            return []
        now = self.clock.now()
        self.queue.begin_round(now)
        dispatches: list[Dispatch] = []
        rejected: list[Request] = []
        for request in self.queue.ordered(now):
            context = request.prompt_tokens + request.generated
            if routed:
                view = choose_power_of_two(
                    replicas, context, config.kv_headroom_fraction, self._routing_rng
                )
            else:
                view = choose_replica(
                    replicas, context, config.kv_headroom_fraction, config.max_engine_waiting
                )
            if view is not None:
                dispatches.append(self._dispatch(request, view, now))
            elif self._fits_nowhere(replicas, context):
                rejected.append(request)
            else:
                break
        for d in dispatches:
            self.queue.remove(d.request)
        for request in rejected:
            self.on_failed(
                request.request_id,
                f"{request.prompt_tokens + request.generated} tokens of context do not "
                "fit in any replica's KV cache",
            )
            self._rejected.append(request)
        return dispatches

    def _fits_nowhere(self, replicas: list[ReplicaView], context: int) -> bool:
        headroom = self.config.kv_headroom_fraction
        return not any(can_ever_hold(v, context, headroom) for v in replicas)

    def take_rejected(self) -> list[Request]:
        """Requests that `schedule()` failed because no replica could ever hold them, since the
        last call: the live actor answers their callers."""
        rejected, self._rejected = self._rejected, []
        return rejected

    def _dispatch(self, request: Request, view: ReplicaView, now: float) -> Dispatch:
        budget = request.remaining_tokens
        for limit in (self.config.slice_tokens, self.queue.slice_limit(request)):
            if limit is not None:
                budget = min(budget, limit)
        priority = engine_priority(self.queue.priority(request, now))
        request.transition(RequestState.DISPATCHED)
        request.replica_id = view.replica_id
        request.num_dispatches += 1
        view.assign(request.request_id, view.blocks_for(request.prompt_tokens + request.generated))
        return Dispatch(request, view.replica_id, priority, max(1, budget))

    def on_running(self, request_id: str) -> None:
        request = self.get(request_id)
        if request.state is RequestState.DISPATCHED:
            request.transition(RequestState.RUNNING)
            self._replicas[request.replica_id].started(request_id)

    def on_tokens(self, request_id: str, count: int) -> None:
        self.get(request_id).record_tokens(count, self.clock.now())

    def on_slice_end(self, request_id: str) -> None:
        """The dispatch ended before the request did: rank it again with what it has."""
        self._slices += 1
        self._requeue(self.get(request_id))

    def on_preempted(self, request_id: str) -> None:
        """The engine evicted the request to recompute it later (it stays on that replica)."""
        request = self.get(request_id)
        request.num_preemptions += 1
        if request.state is RequestState.RUNNING:
            request.state = RequestState.DISPATCHED
            view = self._replicas[request.replica_id]
            view.pending_blocks[request_id] = 0

    def on_finished(self, request_id: str) -> None:
        request = self.get(request_id)
        request.transition(RequestState.FINISHED)
        request.finish_time = self.clock.now()
        self._release(request)
        self._finished += 1
        self.rank_quality.record(request)

    def on_failed(self, request_id: str, error: str) -> None:
        request = self.get(request_id)
        if request.state is RequestState.QUEUED:
            self.queue.remove(request)
        request.transition(RequestState.FAILED)
        request.error = error
        request.finish_time = self.clock.now()
        self._release(request)
        self._failed += 1

    def abort(self, request_id: str) -> None:
        """The client went away: forget the request wherever it is."""
        request = self._requests.get(request_id)
        if request is not None and not request.state.is_terminal:
            self.on_failed(request_id, "aborted")

    def forget(self, request_id: str) -> Request:
        """Drop a finished or failed request from memory (the live actor does, the simulator
        keeps them for its metrics)."""
        request = self.get(request_id)
        if not request.state.is_terminal:
            raise ValueError(f"{request_id} is still {request.state.value}")
        return self._requests.pop(request_id)

    def requests(self) -> list[Request]:
        return list(self._requests.values())

    def stats(self) -> SchedulerStats:
        states = [r.state for r in self._requests.values()]
        return SchedulerStats(
            queued=len(self.queue),
            dispatched=states.count(RequestState.DISPATCHED),
            running=states.count(RequestState.RUNNING),
            finished=self._finished,
            failed=self._failed,
            rounds=self.queue.round,
            slices=self._slices,
        )

    def _release(self, request: Request) -> None:
        if request.replica_id is not None and request.replica_id in self._replicas:
            self._replicas[request.replica_id].release(request.request_id)

    def _requeue(self, request: Request) -> None:
        self._release(request)
        request.replica_id = None
        request.transition(RequestState.QUEUED)
        self.queue.add(request, self.clock.now())
