"""The scheduler actor: one per cluster, named, hosting the scheduling core (cluster.scheduler)
on the wall clock.

It keeps the only long queue and answers each request's "where do I run now?" with a `Ticket`
naming a replica; its `ReplicaFleet` starts, watches and replaces the engine replicas. Tokens
never pass through it: the ingress streams them straight from the replica, and replicas send it
coalesced, numbered reports. Every event runs a scheduling round.

It survives its own death: Ray restarts it with its recorded settings (settings_record), its
fleet reattaches to the (detached) replicas, their snapshots give back what runs where with the
tokens so far, and the ingresses give back what waits (each call carries the request's
description and the tokens its client holds). Requests whose ingress stops renewing its lease
are aborted as "client gone" (cluster.runtime.leases).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

import ray

from cluster.admission import Refusal
from cluster.clock import WallClock
from cluster.config import AdmissionConfig, PolicyConfig, PreemptionConfig, SchedulerConfig
from cluster.request import Request
from cluster.runtime.autoscaling import FleetAutoscaling
from cluster.runtime.caller_counts import CallerCounts
from cluster.runtime.early_ends import EarlyEndDelivery
from cluster.runtime.ended import EndedRequests
from cluster.runtime.fleet import ReplicaFleet
from cluster.runtime.lease_watch import LeaseWatch
from cluster.runtime.leases import IngressLeases
from cluster.runtime.log_setup import LogConfig, bind_request, configure_logging
from cluster.runtime.metrics_export import SchedulerMetrics
from cluster.runtime.protocol import (
    DispatchState,
    ReplicaInfo,
    ReplicaReport,
    ReplicaSnapshot,
    SubmitRequest,
    Ticket,
)
from cluster.runtime.settings_record import SchedulerSettings, forget, record, settings_at_start
from cluster.runtime.spec import ReplicaSpec
from cluster.runtime.status import ClusterStatus
from cluster.runtime.tickets import TicketBoard
from cluster.scheduler import Scheduler, UnknownRequest

logger = logging.getLogger(__name__)


class SchedulerActor:
    """Ray actor (created by cluster.runtime.scheduler_handle)."""

    # An ingress renews its lease every second or so; past this, its requests are aborted.
    INGRESS_LEASE_S = 5.0
    # A caller has its last token a moment before the request's end is booked here.
    RECONFIGURE_SETTLE_S = 10.0

    def __init__(
        self,
        config: SchedulerConfig,
        replicas: list[ReplicaSpec],
        replace_dead: bool = True,
        logs: LogConfig | None = None,
    ) -> None:
        configure_logging(logs or LogConfig(), "scheduler", "scheduler")
        settings = settings_at_start(config, replicas)
        self._core = Scheduler(settings.config, WallClock())
        self._deployed = settings.deployed  # what `reconcile` applied last
        self.fleet = ReplicaFleet(
            settings.replicas,
            lambda: ray.get_runtime_context().current_actor,
            self._replica_up,
            self._replica_down,
            replace_dead,
            self._record_settings,
        )
        self._record_settings()
        self.metrics = SchedulerMetrics(self._core, self.fleet)
        self._early_ends = EarlyEndDelivery(self.fleet.handles)
        self._tickets = TicketBoard()
        self._counts = CallerCounts()  # callers' token counts, until their dispatch ends
        self._report_seq: dict[str, int] = {}  # replica -> last report applied
        self._leases = IngressLeases(self.INGRESS_LEASE_S)
        self._lease_watch = LeaseWatch(
            self._leases,
            self._core.clock,
            self._schedule,
            self.abort,
            lambda: self.config.admission.queue_timeout_s is not None,
        )
        self._ended = EndedRequests()
        self._booted = asyncio.Event()
        self._boot_began = False
        ray.get_runtime_context().current_actor.boot.remote()
        self._lease_task: asyncio.Task | None = None

    @property
    def config(self) -> SchedulerConfig:
        return self._core.config

    async def _ready(self) -> None:
        """Every call waits until the fleet is attached: after a restart, a report or a caller
        must not reach a core that has not yet learned what the replicas run."""
        await self._booted.wait()

    @ray.method(max_task_retries=-1)
    async def boot(self) -> None:
        """Attach to the live replicas, let every waiting call in, then start the missing ones.
        Called by the actor itself (a caller's call, cancelled on its timeout, would cancel the
        start with it); retried, as a restarted actor's call to itself can be refused while Ray
        has it as restarting (every call would then wait for ever)."""
        if self._boot_began:
            return
        self._boot_began = True
        began = time.monotonic()
        try:
            await self.fleet.adopt_running()  # it logs what it adopts
            attached = await self.fleet.attach_live()
        finally:  # leases run from now: the ingresses' renewals waited for the boot
            self._leases.open(self._core.clock.now())
            self._lease_task = asyncio.create_task(self._lease_watch.run())
            self._booted.set()
        took = time.monotonic() - began
        logger.info("scheduler up in %.1f s: %d live replicas", took, len(attached))
        await self.fleet.start()
        if self.config.autoscaling.enabled:
            scaling = FleetAutoscaling(self.config.autoscaling, self._core, self.fleet)
            self._autoscaling_task = asyncio.create_task(scaling.run())

    # ---- replicas -------------------------------------------------------------------------

    async def start(self) -> list[ReplicaInfo]:
        """Start (or reattach to) every configured replica; idempotent. Returns the capacities
        of the replicas now serving."""
        await self._ready()
        return await self.fleet.start()

    async def scale(self, num_replicas: int) -> list[str]:
        """Grow or shrink the replica set (see ReplicaFleet.scale)."""
        await self._ready()
        return await self.fleet.scale(num_replicas)

    async def replica_failed(self, replica_id: str) -> bool:
        """An ingress lost its stream from `replica_id`: check it now rather than at the next
        health round. True if the replica is gone (its requests are back in the queue)."""
        await self._ready()
        return not await self.fleet.check(replica_id)

    def _replica_up(self, snapshot: ReplicaSnapshot) -> None:
        info = snapshot.info
        self._core.add_replica(
            info.replica_id, info.max_num_seqs, info.total_kv_blocks, info.block_size
        )
        self._report_seq[info.replica_id] = snapshot.seq
        for state in snapshot.dispatches:
            self._adopt(info.replica_id, state, already_counted=0)
        self._schedule()

    def _replica_down(self, replica_id: str, why: str) -> None:
        self._report_seq.pop(replica_id, None)
        if replica_id in self._core.replica_ids:
            returned = self._core.remove_replica(replica_id)
            message = "replica %s removed (%s): %d requests back to the queue"
            logger.warning(message, replica_id, why, len(returned))
        self._schedule()

    # ---- requests -------------------------------------------------------------------------

    async def submit(self, submit: SubmitRequest) -> Refusal | None:
        """A new request (already scored by the predictor); it arrives now, on this clock.
        Returns the refusal to answer it with if admission control does not let it in. A
        repeated submit (the caller retried) changes nothing."""
        bind_request(submit.request_id)
        await self._ready()
        self._leases.renew(submit.ingress_id, self._core.clock.now())  # a call: it is alive
        if submit.request_id in self._ended:
            return self._ended.refusal(submit.request_id)
        if self._known(submit.request_id):
            return None
        refusal = self._register(submit, delivered=0, dispatches=0, admit=True)
        if refusal is not None:
            logger.info("%s refused: %s", submit.request_id, refusal.message)
        self._schedule()
        return refusal

    async def wait_dispatch(
        self, submit: SubmitRequest, after: int = 0, delivered: int = 0
    ) -> Ticket:
        """Wait until the request's dispatch number `after + 1` (or a later one) is decided.
        `delivered`: the tokens its caller holds, which the next dispatch continues from. A
        request this scheduler does not know (its previous life did) is taken back as queued."""
        bind_request(submit.request_id)
        await self._ready()
        self._leases.renew(submit.ingress_id, self._core.clock.now())
        rid = submit.request_id
        if rid in self._ended:
            return self._ended.ticket(rid, after)
        if not self._known(rid):
            logger.info("%s: taken back from its ingress with %d tokens", rid, delivered)
            self._register(submit, delivered, dispatches=after)
            self._schedule()
        if self._core.resume_from(rid, delivered):
            self._tickets.withdraw(rid)
            if (request := self._core.get(rid)).state.is_terminal:
                self._forget(request)
            self._schedule()
        elif self._core.get(rid).num_dispatches == after:  # its end is not reported yet
            self._counts.hold(rid, after, delivered)
        if rid in self._ended:  # finished: its caller holds all of it
            return self._ended.ticket(rid, after)
        return await self._tickets.after(rid, after)

    async def heartbeat(self, ingress_id: str) -> None:
        """An ingress renews the lease of its requests (before the boot ends too: a lease is
        opened afresh then)."""
        self._leases.renew(ingress_id, self._core.clock.now())

    async def abort(self, request_id: str, why: str = "aborted") -> None:
        """The client went away (or the ingress gave up): forget the request."""
        bind_request(request_id)
        await self._ready()
        try:
            request = self._core.get(request_id)
        except UnknownRequest:
            return
        replica = request.replica_id
        if not request.state.is_terminal:
            self._core.fail(request_id, why)
        self._forget(request)
        handle = self.fleet.handles.get(replica) if replica else None
        if handle is not None:
            handle.abort.remote(request_id)  # frees the slot if its stream is still open

    async def report(self, report: ReplicaReport) -> None:
        """A replica's coalesced news since its previous report (or a snapshot of it)."""
        await self._ready()
        events = report.events
        replica = events.replica_id
        if report.seq <= self._report_seq.get(replica, report.seq - 1):
            return  # covered by the snapshot this scheduler rebuilt itself from
        if replica in self._report_seq:
            self._report_seq[replica] = report.seq
            if events.load is not None:
                self.fleet.loads[replica] = events.load
            for state in report.dispatches:
                counted = events.tokens.get(state.submit.request_id, 0)
                self._adopt(replica, state, already_counted=counted)
        ended = self._core.apply(events)
        for request in ended + self._counts.settle(self._core, events.ended.keys()):
            self._forget(request)
        self._schedule()

    async def set_policy(self, policy: PolicyConfig) -> None:
        """Switch the scheduling policy (benchmarks compare policies on the same engines).
        Only between requests: the queue's order would mean nothing across two policies."""
        await self._reconfigure(policy=policy)

    async def set_admission(self, admission: AdmissionConfig) -> None:
        """New queue bounds, applied at once (see Scheduler.set_admission)."""
        await self._ready()
        self._core.set_admission(admission)
        self._record_settings()
        logger.info("admission is now %s", admission)

    async def set_preemption(self, preemption: PreemptionConfig) -> None:
        """Switch scheduler-driven preemption (or its guards); only between requests."""
        await self._reconfigure(preemption=preemption)

    async def _reconfigure(self, **changes: object) -> None:
        """Waits a while for the requests in flight to end (see Scheduler.reconfigure)."""
        await self._ready()
        settle_by = time.monotonic() + self.RECONFIGURE_SETTLE_S
        while self._core.stats().in_flight and time.monotonic() < settle_by:
            await asyncio.sleep(0.05)
        self._core.reconfigure(dataclasses.replace(self.config, **changes))
        self._record_settings()
        logger.info("settings changed: %s", changes)

    async def reconcile(
        self, config: SchedulerConfig, replicas: list[ReplicaSpec]
    ) -> list[ReplicaInfo]:
        """Bring the cluster to a (re)deployment's settings, then start what is missing. The
        scheduling settings change only while no request is in flight. The deployment applied
        last, applied again (one of its ingresses restarted), leaves the fleet as scaled since
        and the policy as set since."""
        await self._ready()
        if (config, replicas) == self._deployed:
            return await self.fleet.start()
        self._deployed = (config, replicas)
        if config != self.config:
            try:
                self._core.reconfigure(config)
            except RuntimeError as e:
                logger.warning("scheduling settings left as they were: %s", e)
        return await self.fleet.reconcile(replicas)

    async def status(self) -> ClusterStatus:
        await self._ready()
        return self.metrics.status()

    async def shutdown(self) -> None:
        """Stop the replicas' engines and actors; the settings are forgotten."""
        if self._lease_task is not None:
            self._lease_task.cancel()
        await self.fleet.shutdown()
        forget()

    # ---- internals ------------------------------------------------------------------------

    def _record_settings(self) -> None:
        record(SchedulerSettings(self.config, self._deployed, list(self.fleet.specs.values())))

    def _known(self, request_id: str) -> bool:
        try:
            self._core.get(request_id)
        except UnknownRequest:
            return False
        return True

    def _register(
        self, submit: SubmitRequest, delivered: int, dispatches: int, admit: bool = False
    ) -> Refusal | None:
        """Queue a request, through admission control when `admit` (one taken back after a
        restart was admitted before); `dispatches`: those of the scheduler's previous life,
        so that dispatch numbers (and engine request ids) stay unique."""
        now = self._core.clock.now()
        waited = max(0.0, time.time() - submit.arrival_wall) if submit.arrival_wall else 0.0
        request = submit.to_request(arrival=now - waited, generated=delivered)
        request.num_dispatches = dispatches
        refusal = self._core.admit(request) if admit else self._core.submit(request)
        if refusal is None:
            self._lease_for(submit)
        return refusal

    def _adopt(self, replica_id: str, state: DispatchState, already_counted: int) -> None:
        """A dispatch running on a replica that this scheduler did not decide (its previous
        life did): the request is running there, with the tokens it has so far."""
        rid = state.submit.request_id
        if rid in self._ended:
            return
        if self._known(rid):
            known = self._core.get(rid)
            # A report of an older dispatch (taken before its caller moved on and delivered
            # after) is stale: the caller follows the newer one, and the counts are put right
            # by the caller's `delivered` at its next dispatch.
            if known.replica_id != replica_id and state.dispatch_no >= known.num_dispatches:
                logger.warning("%s runs on %s too; aborting it there", rid, replica_id)
                handle = self.fleet.handles.get(replica_id)
                if handle is not None:
                    handle.abort.remote(rid)
            return
        now = self._core.clock.now()
        waited = max(0.0, time.time() - state.submit.arrival_wall)
        request = state.submit.to_request(now - waited, state.generated - already_counted)
        request.num_dispatches = state.dispatch_no
        if state.started:
            request.first_token_time = now
        self._core.restore(request, replica_id)
        self._lease_for(state.submit)
        logger.info("%s: taken back from %s with %d tokens", rid, replica_id, state.generated)

    def _lease_for(self, submit: SubmitRequest) -> None:
        self._leases.track(submit.request_id, submit.ingress_id, self._core.clock.now())

    def _forget(self, request: Request) -> None:
        """An ended request: answer its waiter, drop it, remember why it ended."""
        rid = request.request_id
        self._core.forget(rid)
        self.metrics.ended(request)
        self._counts.forget(rid)
        self._leases.forget(rid)
        self._ended.remember(rid, request.error, request.refusal)
        self._tickets.end(self._ended.ticket(rid, request.num_dispatches))

    def _schedule(self) -> None:
        for d in self._core.schedule():
            self._tickets.post(
                Ticket(
                    d.request.request_id,
                    d.request.num_dispatches,
                    d.replica_id,
                    self.fleet.handles[d.replica_id],
                    d.priority,
                    d.max_new_tokens,
                    d.final,
                )
            )
        # Requests no replica could ever hold (context beyond every KV cache), or dropped from
        # the queue by admission control: answer them now.
        for request in self._core.take_rejected():
            self._forget(request)
        for end in self._core.take_early_ends():  # the victims' replicas end their dispatches
            self._early_ends.send(end, self._core.get(end.request_id).num_dispatches)
