"""The cluster-wide scheduler: one global queue in policy order, dispatched to replicas with
headroom. Plain Python driven by events and an injected clock; the live scheduler actor and the
simulator both host this same class.

Two halves, as in vLLM's scheduler: `schedule()` decides (which requests run where, for how many
tokens), `apply(events)` takes in what the engines did (`cluster.events`)."""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter

from cluster.admission import AdmissionControl, Refusal, ShedReason
from cluster.clock import Clock
from cluster.config import AdmissionConfig, SchedulerConfig
from cluster.dispatch import Dispatch, dispatch
from cluster.events import EngineEvents, FinishReason
from cluster.latency_model import LatencyModel
from cluster.metrics import SchedulerStats
from cluster.policies import make_queue
from cluster.preemption import slice_tokens
from cluster.rank_quality import RankQualityMonitor
from cluster.replicas import ReplicaSet, ReplicaView
from cluster.request import Request, RequestState
from cluster.routing import make_routing
from cluster.service_rate import ServiceRate
from cluster.slo_admission import SLOAdmission
from cluster.slo_attainment import SLOAttainment
from cluster.swaps import EarlyEnd, Swaps


class UnknownRequest(KeyError):
    pass


class Scheduler:
    def __init__(
        self, config: SchedulerConfig, clock: Clock, latency: LatencyModel | None = None
    ) -> None:
        """`latency`: the SLO-aware policies' latency model (the simulator gives its engines'
        profile); None: the profile the policy config names."""
        self.clock, self.latency = clock, latency
        self._replicas = ReplicaSet()
        self._requests: dict[str, Request] = {}
        self._seq = itertools.count()
        self._finished = self._failed = self._slices = 0
        self._rounds_before = 0  # rounds counted by queues replaced in `reconfigure`
        self._rejected: list[Request] = []
        self._shed: Counter[ShedReason] = Counter()
        self.slo_admission = SLOAdmission(latency)  # its count of demotions stays
        self._configure(config)
        self.rate = ServiceRate()
        self.rank_quality = RankQualityMonitor(config.rank_quality_window)
        self.slo_attainment = SLOAttainment(config.slo)

    def reconfigure(self, config: SchedulerConfig) -> None:
        """New scheduling settings (policy, routing, slices...), only while no request is in
        flight (a queue's order means nothing across policies); replicas and counters stay."""
        if active := self.stats().in_flight:
            raise RuntimeError(f"cannot change scheduling with {active} requests in flight")
        self._rounds_before += self.queue.round
        if config.rank_quality_window != self.config.rank_quality_window:
            self.rank_quality = RankQualityMonitor(config.rank_quality_window)
        if config.slo != self.config.slo:
            self.slo_attainment = SLOAttainment(config.slo)
        self._configure(config, self._swaps)

    def _configure(self, config: SchedulerConfig, old: Swaps | None = None) -> None:
        self.config = config
        self.queue = make_queue(config.policy, config.slo, self.latency)
        self.routing = make_routing(config)
        self._swaps = Swaps(config, self.latency, self.routing, old)
        self.admission = AdmissionControl(config.admission)

    def set_admission(self, admission: AdmissionConfig) -> None:
        """New queue bounds, at any time: they apply to the requests that arrive from now on
        (and the queue deadline to every queued request)."""
        self.config = dataclasses.replace(self.config, admission=admission)
        self.admission = AdmissionControl(admission)

    # ---- replicas -------------------------------------------------------------------------

    def add_replica(
        self, replica_id: str, max_num_seqs: int, total_kv_blocks: int, block_size: int
    ) -> None:
        self._replicas.add(replica_id, max_num_seqs, total_kv_blocks, block_size)

    def remove_replica(self, replica_id: str) -> list[Request]:
        """A replica is gone: its requests go back to the queue with their tokens, to go on."""
        view = self._replicas.remove(replica_id)
        returned = [self._requests[rid] for rid in sorted(view.assigned)]
        for request in returned:
            self._requeue(request)
        return returned

    @property
    def replica_ids(self) -> list[str]:
        return self._replicas.ids

    def drain(self, replica_id: str) -> None:
        """Send the replica no new request; what runs there finishes (see `is_idle`)."""
        self._replicas.drain(replica_id)

    def undrain(self, replica_id: str) -> None:
        self._replicas.undrain(replica_id)

    @property
    def draining(self) -> list[str]:
        return self._replicas.draining

    def is_idle(self, replica_id: str) -> bool:
        return not self._replicas[replica_id].assigned

    def ongoing(self) -> int:
        """Requests dispatched to or running on the serving (not draining) replicas."""
        return self._replicas.ongoing()

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

    def admit(self, request: Request) -> Refusal | None:
        """Submit `request` if admission control lets it in; else mark it failed with the
        refusal to answer it with, and return that (the scheduler does not keep it). A request
        admitted in place of a queued one of a tenant over its share fails that one, which
        `take_rejected` then returns. First, SLO-aware admission refuses, or demotes to the
        best-effort class, one whose SLO no replica could meet (`cluster.slo_admission`)."""
        now, serving = self.clock.now(), self._replicas.serving()
        refusal = self.slo_admission.screen(request, self.config, serving, self._requests, now)
        if refusal is None and self.config.admission.is_bounded:
            queued = [r for r in self._requests.values() if r.state is RequestState.QUEUED]
            decision = self.admission.decide(request, queued, self.rate, now)
            if (refusal := decision.refusal) is None and decision.evict is not None:
                self._refuse(decision.evict, self.admission.eviction_refusal(decision.evict))
        if refusal is not None:
            request.state, request.error = RequestState.FAILED, refusal.message
            request.refusal = refusal
            self._shed[refusal.reason] += 1
            return refusal
        self.submit(request)
        return None

    def restore(self, request: Request, replica_id: str | None = None) -> None:
        """Take back a request a restarted host learned of from the replicas or the callers,
        with the tokens it has (`generated`) and its dispatch count: running on `replica_id`
        (its slot and blocks are the replica's), or queued when None."""
        if request.request_id in self._requests:
            raise ValueError(f"duplicate request id {request.request_id}")
        request.seq = next(self._seq)
        self._requests[request.request_id] = request
        if replica_id is None:
            request.state = RequestState.QUEUED
            request.replica_id = None
            self.queue.add(request, self.clock.now())
            return
        view = self._replicas[replica_id]
        request.state = RequestState.RUNNING
        request.replica_id = replica_id
        view.assign(request.request_id, 0)  # its blocks are in the replica's reports already

    def get(self, request_id: str) -> Request:
        try:
            return self._requests[request_id]
        except KeyError:
            raise UnknownRequest(request_id) from None

    def schedule(self) -> list[Dispatch]:
        """One round: walk the queue in policy order and place each request where the routing
        says, until it finds no room for the next one. Strict order: a request that fits
        nowhere now stops the round rather than being overtaken; one that could never fit on
        any replica fails (see `take_rejected`) instead of stalling all."""
        now = self.clock.now()
        if self.config.admission.queue_timeout_s is not None and self.queue:
            queued = [r for r in self._requests.values() if r.state is RequestState.QUEUED]
            for request in self.admission.expired(queued, now):
                self._refuse(request, self.admission.timeout_refusal(request, now))
        replicas = self._replicas.serving()
        if not self.queue or not replicas:
            return []
        if self.queue.wants_plan(now):
            held = [[self._requests[rid] for rid in sorted(v.assigned)] for v in replicas]
            self.queue.plan(now, list(zip(replicas, held, strict=True)))
        for view in replicas:
            view.slot_limit = self.queue.concurrency_limit(view.replica_id)
        dispatches: list[Dispatch] = []
        for waiting, view in self._swaps.freed(replicas):  # (cluster.swaps)
            dispatches.append(self._dispatch(waiting, view, now))
            self.queue.remove(waiting)
        blocked = not self.routing.has_room(replicas)
        if not blocked:
            self.queue.begin_round(now, len(replicas))
        rejected: list[Request] = []
        headroom = self.config.kv_headroom_fraction
        priority = lambda r: self.queue.priority(r, now)  # noqa: E731
        for request in () if blocked else self._swaps.order(self.queue, priority, replicas, now):
            view = self.routing.choose(replicas, request)
            if view is not None:
                dispatches.append(self._dispatch(request, view, now))
            elif not any(v.can_ever_hold(request.context, headroom) for v in replicas):
                rejected.append(request)
            else:
                blocked = True
                break
        for d in dispatches:
            self.queue.remove(d.request)
        if blocked and self.config.preemption.enabled and self.queue:
            order = self._swaps.order(self.queue, priority, replicas, now)
            self._swaps.consider(order, priority, replicas, self._requests, now)
        for request in rejected:
            error = f"{request.context} tokens of context do not fit in any replica's KV cache"
            self.fail(request.request_id, error)
            self._rejected.append(request)
        return dispatches

    def take_early_ends(self) -> list[EarlyEnd]:
        """Dispatches preempted (`cluster.swaps`) since the last call, for their engines."""
        return self._swaps.take_early_ends()

    def take_rejected(self) -> list[Request]:
        """Requests the scheduler failed on its own since the last call (no replica could hold
        them, or admission control dropped them: `Request.refusal`), for their callers."""
        rejected, self._rejected = self._rejected, []
        return rejected

    def _dispatch(self, request: Request, view: ReplicaView, now: float) -> Dispatch:
        quantum, batch = self.queue.slice_limit(request), len(view.assigned) + 1
        if quantum is not None:  # the step-time profile is loaded only for a policy that slices
            quantum = slice_tokens(quantum, request, batch, self._swaps.latency, self.config.policy)
        limits = (request.remaining_tokens, self.config.slice_tokens, quantum)
        budget = max(1, min(limit for limit in limits if limit is not None))
        self._swaps.dispatched(request, view.replica_id, now)
        return dispatch(request, view, budget, self.queue.priority(request, now))

    def apply(self, events: EngineEvents) -> list[Request]:
        """Take in one replica's news. Returns the requests that it ended (finished or failed).
        News of requests this scheduler no longer holds (aborted and forgotten meanwhile), or
        no longer has on that replica (moved on after the replica was dropped), is ignored:
        reports can arrive late."""
        ended: list[Request] = []
        here, backlogged = events.replica_id, bool(self.queue)
        for rid in events.preempted:
            if (request := self._active(rid, here)) is not None:
                self._preempted(request)
        for rid in events.started:
            if (request := self._active(rid, here)) is not None:
                self._running(request)
                self._swaps.found_cached(request, events.cached.get(rid, 0))
        now, tokens = self.clock.now(), 0
        for rid, count in events.cached.items():
            if (request := self._active(rid, here)) is not None:
                request.cached_tokens += count
        for rid, count in events.tokens.items():
            if (request := self._active(rid, here)) is not None:
                request.record_tokens(count, now)
                tokens += count
        for rid, reason in events.ended.items():
            if (request := self._active(rid, here)) is None:
                continue
            if reason in (FinishReason.SLICE, FinishReason.PREEMPT):
                self._slices += reason is FinishReason.SLICE
                self._requeue(request)
            elif reason is FinishReason.ABORT:
                self.fail(rid, "aborted")
                ended.append(request)
            else:
                self._finish(request)
                ended.append(request)
        for rid, error in events.failed.items():
            if (request := self._active(rid, here)) is not None:
                self.fail(rid, error)
                ended.append(request)
        finished = sum(r.state is RequestState.FINISHED for r in ended)
        self.rate.record(now, tokens, finished, backlogged)
        view = self._replicas.get(events.replica_id)
        if events.load is not None and view is not None:
            view.reported_free_blocks = events.load.free_kv_blocks
            view.total_kv_blocks = events.load.total_kv_blocks
        return ended

    def resume_from(self, request_id: str, delivered: int) -> bool:
        """The caller holds `delivered` tokens of the request (the ingress records what reached
        the client). Where the scheduler counted otherwise (a dead replica's reports were lost),
        its count is set to the caller's before the next dispatch, and a dispatch decided on
        the wrong count is taken back; one whose caller holds all `max_tokens` finishes. True
        when the request went back to the queue, or finished, for that."""
        request = self.get(request_id)
        waiting = request.state in (RequestState.QUEUED, RequestState.DISPATCHED)
        complete = delivered >= request.max_tokens
        if not waiting or (request.generated == delivered and not complete):
            return False
        if request.state is RequestState.QUEUED:
            self.queue.remove(request)
        else:
            self._release(request)
            request.replica_id = None
        request.generated = delivered
        if complete:
            self._finish(request)
            return True
        request.state = RequestState.QUEUED
        self.queue.add(request, self.clock.now())
        return True

    def fail(self, request_id: str, error: str) -> None:
        request = self.get(request_id)
        if request.state is RequestState.QUEUED:
            self.queue.remove(request)
        request.transition(RequestState.FAILED)
        request.error, request.finish_time = error, self.clock.now()
        self._release(request)
        self._failed += 1

    def abort(self, request_id: str) -> None:
        """The client went away: forget the request wherever it is."""
        if self._active(request_id) is not None:
            self.fail(request_id, "aborted")

    def forget(self, request_id: str) -> Request:
        """Drop a finished or failed request from memory (the live actor; not the simulator)."""
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
            rounds=self._rounds_before + self.queue.round,
            slices=self._slices,
            preemptions=self._swaps.count,
            retained_share=self._swaps.retained_share,
            resume_wait_s=self._swaps.resume_wait_s,
            shed={reason.value: n for reason, n in self._shed.items()},
            slo_demoted=self.slo_admission.demoted,
        )

    # ---- internals ------------------------------------------------------------------------

    def _active(self, request_id: str, replica_id: str | None = None) -> Request | None:
        """The request if it is still in flight (on `replica_id`, when given)."""
        request = self._requests.get(request_id)
        if request is None or request.state.is_terminal:
            return None
        if replica_id is not None and request.replica_id != replica_id:
            return None
        return request

    def _running(self, request: Request) -> None:
        if request.state is RequestState.DISPATCHED:
            request.transition(RequestState.RUNNING)
            self._replicas[request.replica_id].started(request.request_id)

    def _preempted(self, request: Request) -> None:
        """The engine evicted the request to recompute it later (it stays on that replica)."""
        request.num_preemptions += 1
        if request.state is RequestState.RUNNING:
            request.state = RequestState.DISPATCHED
            self._replicas[request.replica_id].pending_blocks[request.request_id] = 0

    def _finish(self, request: Request) -> None:
        request.transition(RequestState.FINISHED)
        request.finish_time = self.clock.now()
        self._release(request)
        self._finished += 1
        self.rank_quality.record(request)
        self.slo_attainment.record(request)
        self.queue.finished(request)

    def _refuse(self, request: Request, refusal: Refusal) -> None:
        self.fail(request.request_id, refusal.message)
        request.refusal = refusal
        self._shed[refusal.reason] += 1
        self._rejected.append(request)

    def _release(self, request: Request) -> None:
        if (view := self._replicas.get(request.replica_id)) is not None:
            view.release(request.request_id)

    def _requeue(self, request: Request) -> None:
        self._release(request)
        request.last_replica_id, request.replica_id = request.replica_id, None
        request.transition(RequestState.QUEUED)
        self.queue.add(request, self.clock.now())
