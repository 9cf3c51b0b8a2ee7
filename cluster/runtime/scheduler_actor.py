"""The scheduler actor: one per cluster, named, hosting the scheduling core (cluster.scheduler)
on the wall clock.

It keeps the only long queue and answers each request's "where do I run now?" with a `Ticket`
naming a replica; its `ReplicaFleet` starts, watches and replaces the engine replicas. Tokens
never pass through it: the ingress streams them straight from the replica, and replicas send it
coalesced `EngineEvents`. Every event runs a scheduling round.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

import ray

from cluster.clock import WallClock
from cluster.config import PolicyConfig, SchedulerConfig
from cluster.events import EngineEvents
from cluster.request import Request
from cluster.runtime.fleet import NAMESPACE, ReplicaFleet
from cluster.runtime.protocol import ReplicaInfo, SubmitRequest, Ticket
from cluster.runtime.spec import ReplicaSpec
from cluster.runtime.status import ClusterStatus, ReplicaStatus
from cluster.scheduler import Scheduler, UnknownRequest

logger = logging.getLogger(__name__)

ACTOR_NAME = "rankserve-scheduler"


class SchedulerActor:
    """Ray actor (create with `scheduler_actor_options()`; see `get_or_create`)."""

    def __init__(
        self, config: SchedulerConfig, replicas: list[ReplicaSpec], replace_dead: bool = True
    ) -> None:
        self._core = Scheduler(config, WallClock())
        self.fleet = ReplicaFleet(
            replicas,
            lambda: ray.get_runtime_context().current_actor,
            self._replica_up,
            self._replica_down,
            replace_dead,
        )
        self._tickets: dict[str, Ticket] = {}
        self._waiters: dict[str, asyncio.Future] = {}

    @property
    def config(self) -> SchedulerConfig:
        return self._core.config

    # ---- replicas -------------------------------------------------------------------------

    async def start(self) -> list[ReplicaInfo]:
        """Start every configured replica that is not running yet; idempotent. Returns the
        capacities of the replicas now serving."""
        return await self.fleet.start()

    async def scale(self, num_replicas: int) -> list[str]:
        """Grow or shrink the replica set (see ReplicaFleet.scale)."""
        return await self.fleet.scale(num_replicas)

    async def replica_failed(self, replica_id: str) -> bool:
        """An ingress lost its stream from `replica_id`: check it now rather than at the next
        health round. True if the replica is gone (its requests are back in the queue)."""
        return not await self.fleet.check(replica_id)

    def _replica_up(self, info: ReplicaInfo) -> None:
        self._core.add_replica(
            info.replica_id, info.max_num_seqs, info.total_kv_blocks, info.block_size
        )
        self._schedule()

    def _replica_down(self, replica_id: str, why: str) -> None:
        if replica_id in self._core.replica_ids:
            returned = self._core.remove_replica(replica_id)
            logger.warning(
                "replica %s removed (%s): %d requests back to the queue",
                replica_id,
                why,
                len(returned),
            )
        self._schedule()

    # ---- requests -------------------------------------------------------------------------

    def submit(self, submit: SubmitRequest) -> None:
        """A new request (already scored by the predictor); it arrives now, on this clock."""
        self._core.submit(
            Request(
                request_id=submit.request_id,
                prompt_tokens=submit.prompt_tokens,
                max_tokens=submit.max_tokens,
                arrival_time=self._core.clock.now(),
                score=submit.score,
                predicted_tokens=submit.predicted_tokens,
                slo=submit.slo,
                tenant=submit.tenant,
                priority_hint=submit.priority_hint,
            )
        )
        self._schedule()

    async def wait_dispatch(self, request_id: str, after: int = 0, delivered: int = 0) -> Ticket:
        """Wait until the request's dispatch number `after + 1` (or a later one) is decided.
        `delivered`: the tokens its caller holds, which the next dispatch continues from."""
        try:
            if self._core.resume_from(request_id, delivered):
                self._tickets.pop(request_id, None)
                self._schedule()
        except UnknownRequest:
            return Ticket(request_id, after, error="unknown request")
        ticket = self._tickets.get(request_id)
        if ticket is not None and (ticket.dispatch_no > after or ticket.error is not None):
            return ticket
        future = self._waiters.get(request_id)
        if future is None or future.done():
            future = asyncio.get_running_loop().create_future()
            self._waiters[request_id] = future
        return await asyncio.shield(future)

    def abort(self, request_id: str) -> None:
        """The client went away (or the ingress gave up): forget the request."""
        try:
            request = self._core.get(request_id)
        except UnknownRequest:
            return
        self._core.abort(request_id)
        self._forget(request)

    def report(self, events: EngineEvents) -> None:
        """A replica's coalesced news since its previous report."""
        if events.load is not None and events.replica_id in self.fleet.loads:
            self.fleet.loads[events.replica_id] = events.load
        for request in self._core.apply(events):
            self._forget(request)
        self._schedule()

    def set_policy(self, policy: PolicyConfig) -> None:
        """Switch the scheduling policy (benchmarks compare policies on the same engines).
        Only between requests: the queue's order would mean nothing across two policies."""
        self._core.reconfigure(dataclasses.replace(self.config, policy=policy))
        logger.info("policy is now %s", policy.name)

    async def reconcile(
        self, config: SchedulerConfig, replicas: list[ReplicaSpec]
    ) -> list[ReplicaInfo]:
        """Bring the cluster to a (re)deployment's settings, then start what is missing. The
        scheduling settings change only while no request is in flight."""
        if config != self.config:
            try:
                self._core.reconfigure(config)
            except RuntimeError as e:
                logger.warning("scheduling settings left as they were: %s", e)
        return await self.fleet.reconcile(replicas)

    def status(self) -> ClusterStatus:
        stats = self._core.stats()
        assigned: dict[str, int] = {}
        for request in self._core.requests():
            if request.replica_id is not None and not request.state.is_terminal:
                assigned[request.replica_id] = assigned.get(request.replica_id, 0) + 1
        replicas = []
        for replica_id in self.fleet.specs:
            load = self.fleet.loads.get(replica_id)
            replicas.append(
                ReplicaStatus(
                    replica_id,
                    alive=replica_id in self.fleet.handles,
                    info=self.fleet.infos.get(replica_id),
                    assigned=assigned.get(replica_id, 0),
                    free_kv_blocks=load.free_kv_blocks if load else 0,
                    num_running=load.num_running if load else 0,
                    num_waiting=load.num_waiting if load else 0,
                )
            )
        return ClusterStatus(
            self.config.policy.name,
            stats.queued,
            stats.dispatched,
            stats.running,
            stats.finished,
            stats.failed,
            stats.rounds,
            replicas,
            self._core.rank_quality.summary(),
        )

    async def shutdown(self) -> None:
        """Stop the replicas' engines (their actors die with this one)."""
        await self.fleet.shutdown()

    # ---- internals ------------------------------------------------------------------------

    def _forget(self, request: Request) -> None:
        """An ended request: answer its waiter, drop it."""
        rid = request.request_id
        self._core.forget(rid)
        self._tickets.pop(rid, None)
        future = self._waiters.pop(rid, None)
        if future is not None and not future.done():
            future.set_result(Ticket(rid, request.num_dispatches, error=request.error or "ended"))

    def _schedule(self) -> None:
        for d in self._core.schedule():
            rid = d.request.request_id
            ticket = Ticket(
                rid,
                d.request.num_dispatches,
                d.replica_id,
                self.fleet.handles[d.replica_id],
                d.priority,
                d.max_new_tokens,
                d.final,
            )
            self._tickets[rid] = ticket
            future = self._waiters.pop(rid, None)
            if future is not None and not future.done():
                future.set_result(ticket)
        # Requests no replica could ever hold (context beyond every KV cache): fail them now.
        for request in self._core.take_rejected():
            self._forget(request)


def scheduler_actor_options(detached: bool = True) -> dict[str, Any]:
    """Named, one per cluster; detached so that it outlives any one ingress replica."""
    opts: dict[str, Any] = {
        "name": ACTOR_NAME,
        "namespace": NAMESPACE,
        "get_if_exists": True,
        "num_cpus": 0,
        "max_concurrency": 100_000,
    }
    if detached:
        opts["lifetime"] = "detached"
    return opts


def get_or_create(
    config: SchedulerConfig, replicas: list[ReplicaSpec], detached: bool = True
) -> Any:
    """The cluster's scheduler actor: the existing one if any, else a new one."""
    return (
        ray.remote(SchedulerActor)
        .options(**scheduler_actor_options(detached))
        .remote(config, replicas)
    )
