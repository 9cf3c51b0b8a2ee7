"""The scheduler actor: one per cluster, named, hosting the scheduling core (cluster.scheduler)
on the wall clock.

It owns the engine replicas (starts them, watches their health, replaces dead ones), keeps the
only long queue, and answers each request's "where do I run now?" with a `Ticket` naming a
replica. Tokens never pass through it: the ingress streams them straight from the replica, and
replicas send it coalesced reports (load, first tokens, token counts, ends). Every event runs a
scheduling round.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from dataclasses import dataclass, replace
from typing import Any

from cluster.clock import WallClock
from cluster.config import PolicyConfig, SchedulerConfig
from cluster.engine_replica import EngineReplica, ReplicaInfo, ReplicaReport, ReplicaSpec
from cluster.placement import ReplicaLoad
from cluster.rank_quality import RankQuality
from cluster.request import Request
from cluster.scheduler import Scheduler, UnknownRequest

logger = logging.getLogger(__name__)

ACTOR_NAME = "rankserve-scheduler"
NAME_RETRIES = 60
NAMESPACE = "rankserve"


@dataclass(frozen=True, slots=True)
class Ticket:
    """The answer to `wait_dispatch`: run the request on `replica` for at most
    `max_new_tokens`, with vLLM priority `priority`; or, when `error` is set, stop."""

    request_id: str
    dispatch_no: int  # 1 for the first dispatch, then 2, 3... (slices, replica failures)
    replica_id: str | None = None
    replica: Any = None  # the replica's actor handle
    priority: int = 0
    max_new_tokens: int = 0
    error: str | None = None


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


class SchedulerActor:
    """Ray actor (create with `scheduler_actor_options()`; see `get_or_create`)."""

    HEALTH_INTERVAL_S = 2.0
    HEALTH_TIMEOUT_S = 10.0

    def __init__(
        self, config: SchedulerConfig, replicas: list[ReplicaSpec], replace_dead: bool = True
    ) -> None:
        self.config = config
        self._core = Scheduler(config, WallClock())
        self._specs: dict[str, ReplicaSpec] = {s.replica_id: s for s in replicas}
        self._handles: dict[str, Any] = {}
        self._infos: dict[str, ReplicaInfo] = {}
        self._loads: dict[str, ReplicaLoad] = {}
        self._starting: dict[str, asyncio.Task] = {}
        self._tickets: dict[str, Ticket] = {}
        self._waiters: dict[str, asyncio.Future] = {}
        self._replace_dead = replace_dead
        self._health: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()
        # (finished, failed, rounds) of the cores replaced by policy or settings changes.
        self._earlier = (0, 0, 0)

    # ---- replicas -------------------------------------------------------------------------

    async def start(self) -> list[ReplicaInfo]:
        """Start every configured replica that is not running yet (in parallel); idempotent.
        Returns the capacities of the replicas now serving."""
        import ray

        me = ray.get_runtime_context().current_actor
        for replica_id, spec in self._specs.items():
            if replica_id not in self._handles and replica_id not in self._starting:
                self._starting[replica_id] = asyncio.create_task(self._start_replica(spec, me))
        pending = list(self._starting.values())
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        if self._health is None:
            self._health = asyncio.create_task(self._health_loop())
        return list(self._infos.values())

    async def _start_replica(self, spec: ReplicaSpec, me: Any) -> None:

        try:
            handle = await self._create_replica(spec, me)
            info = await handle.start.remote()
        except Exception:
            logger.exception("replica %s failed to start", spec.replica_id)
            raise
        finally:
            self._starting.pop(spec.replica_id, None)
        self._handles[spec.replica_id] = handle
        self._infos[spec.replica_id] = info
        self._loads[spec.replica_id] = ReplicaLoad(
            spec.replica_id, 0, 0, info.total_kv_blocks, info.total_kv_blocks
        )
        self._core.add_replica(
            spec.replica_id, info.max_num_seqs, info.total_kv_blocks, info.block_size
        )
        logger.info("replica %s up: %s", spec.replica_id, info)
        self._schedule()

    async def _create_replica(self, spec: ReplicaSpec, me: Any) -> Any:
        import ray

        cls = ray.remote(EngineReplica)
        name = replica_actor_name(spec.replica_id)
        for _ in range(NAME_RETRIES):
            try:
                return cls.options(name=name, namespace=NAMESPACE, **spec.actor_options()).remote(
                    spec, me
                )
            except ValueError:
                # The replica this one replaces was just killed: its name frees up shortly.
                await asyncio.sleep(0.5)
        raise RuntimeError(f"actor name {name} stays taken")

    async def scale(self, num_replicas: int) -> list[str]:
        """Grow or shrink the replica set. New replicas copy the first replica's spec; removed
        ones hand their requests back to the queue (they continue elsewhere, with their
        prefix). Returns the replica ids after scaling."""
        if num_replicas < 1:
            raise ValueError("num_replicas must be >= 1")
        ids = list(self._specs)
        template = self._specs[ids[0]]
        while len(ids) < num_replicas:
            new_id = _next_id(ids)
            self._specs[new_id] = replace(template, replica_id=new_id)
            ids.append(new_id)
        for replica_id in ids[num_replicas:]:
            self._specs.pop(replica_id)
            self._drop_replica(replica_id, "scaled down")
        await self.start()
        return list(self._specs)

    async def replica_failed(self, replica_id: str) -> bool:
        """An ingress lost its stream from `replica_id`: check it now rather than at the next
        health round. True if the replica is gone (its requests are back in the queue)."""
        return not await self._check(replica_id)

    def _drop_replica(self, replica_id: str, why: str) -> None:
        import ray

        handle = self._handles.pop(replica_id, None)
        self._infos.pop(replica_id, None)
        self._loads.pop(replica_id, None)
        if replica_id in self._core.replica_ids:
            returned = self._core.remove_replica(replica_id)
            logger.warning(
                "replica %s removed (%s): %d requests back to the queue",
                replica_id,
                why,
                len(returned),
            )
        if handle is not None:
            with contextlib.suppress(Exception):
                ray.kill(handle)
        self._schedule()

    async def _check(self, replica_id: str) -> bool:
        """Whether the replica answers; one that does not is dropped (and replaced)."""
        handle = self._handles.get(replica_id)
        if handle is None:
            return False
        try:
            await asyncio.wait_for(handle.ping.remote(), self.HEALTH_TIMEOUT_S)
            return True
        except Exception as exc:  # noqa: BLE001 - any failure to answer means gone
            why = f"health check failed: {type(exc).__name__}"
        self._drop_replica(replica_id, why)
        if self._replace_dead and replica_id in self._specs:
            task = asyncio.create_task(self.start())
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return False

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.HEALTH_INTERVAL_S)
            await asyncio.gather(*(self._check(r) for r in list(self._handles)))

    # ---- requests -------------------------------------------------------------------------

    def submit(self, request: Request) -> None:
        """A new request (already scored by the predictor). Its arrival time is taken here, on
        the scheduler's clock."""
        request.arrival_time = self._core.clock.now()
        self._core.submit(request)
        self._schedule()

    async def wait_dispatch(self, request_id: str, after: int = 0) -> Ticket:
        """Wait until the request's dispatch number `after + 1` (or a later one) is decided."""
        ticket = self._tickets.get(request_id)
        if ticket is not None and (ticket.dispatch_no > after or ticket.error is not None):
            return ticket
        try:
            self._core.get(request_id)
        except UnknownRequest:
            return Ticket(request_id, after, error="unknown request")
        future = self._waiters.get(request_id)
        if future is None or future.done():
            future = asyncio.get_running_loop().create_future()
            self._waiters[request_id] = future
        return await asyncio.shield(future)

    def abort(self, request_id: str) -> None:
        """The client went away (or the ingress gave up): forget the request."""
        self._end(request_id, error="aborted")

    def fail(self, request_id: str, error: str) -> None:
        self._end(request_id, error=error)

    def report(self, report: ReplicaReport) -> None:
        """A replica's coalesced news since its previous report."""
        core = self._core
        if report.load.replica_id in core.replica_ids:
            core.update_load(report.load)
            self._loads[report.load.replica_id] = report.load
        for rid in report.started:
            with contextlib.suppress(UnknownRequest):
                core.on_running(rid)
        for rid, count in report.tokens.items():
            with contextlib.suppress(UnknownRequest):
                core.on_tokens(rid, count)
        for rid, reason in report.ended.items():
            if reason == "slice":
                with contextlib.suppress(UnknownRequest):
                    core.on_slice_end(rid)
            elif reason == "abort":
                self._end(rid, error="aborted")
            else:
                self._end(rid, error=None)
        for rid, error in report.failed.items():
            self._end(rid, error=error)
        self._schedule()

    def set_policy(self, policy: PolicyConfig) -> None:
        """Switch the scheduling policy (benchmarks compare policies on the same engines).
        Only between requests: the queue's order would mean nothing across two policies."""
        self._replace_core(dataclasses.replace(self.config, policy=policy))
        logger.info("policy is now %s", policy.name)

    async def reconcile(
        self, config: SchedulerConfig, replicas: list[ReplicaSpec]
    ) -> list[ReplicaInfo]:
        """Bring the cluster to a (re)deployment's settings, then start what is missing.
        Replicas whose settings changed are replaced (their requests continue on the others
        meanwhile); the scheduling settings change only while no request is in flight."""
        if self._starting:
            await asyncio.gather(*self._starting.values(), return_exceptions=True)
        wanted = {s.replica_id: s for s in replicas}
        for replica_id in list(self._specs):
            if wanted.get(replica_id) != self._specs[replica_id]:
                del self._specs[replica_id]
                self._drop_replica(replica_id, "settings changed")
        for replica_id, spec in wanted.items():
            self._specs.setdefault(replica_id, spec)
        if config != self.config:
            try:
                self._replace_core(config)
            except RuntimeError as e:
                logger.warning("scheduling settings left as they were: %s", e)
        return await self.start()

    def _replace_core(self, config: SchedulerConfig) -> None:
        active = [r for r in self._core.requests() if not r.state.is_terminal]
        if active:
            raise RuntimeError(f"cannot change scheduling with {len(active)} requests in flight")
        core = Scheduler(config, WallClock())
        for replica_id, info in self._infos.items():
            core.add_replica(replica_id, info.max_num_seqs, info.total_kv_blocks, info.block_size)
            load = self._loads.get(replica_id)
            if load is not None:
                core.update_load(load)
        old = self._core.stats()
        self._earlier = (
            self._earlier[0] + old.finished,
            self._earlier[1] + old.failed,
            self._earlier[2] + old.rounds,
        )
        if config.rank_quality_window == self.config.rank_quality_window:
            core.rank_quality = self._core.rank_quality  # one window across policy changes
        self.config = config
        self._core = core

    def status(self) -> ClusterStatus:
        stats = self._core.stats()
        assigned: dict[str, int] = {}
        for request in self._core.requests():
            if request.replica_id is not None and not request.state.is_terminal:
                assigned[request.replica_id] = assigned.get(request.replica_id, 0) + 1
        replicas = []
        for replica_id in self._specs:
            load = self._loads.get(replica_id)
            replicas.append(
                ReplicaStatus(
                    replica_id,
                    alive=replica_id in self._handles,
                    info=self._infos.get(replica_id),
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
            self._earlier[0] + stats.finished,
            self._earlier[1] + stats.failed,
            self._earlier[2] + stats.rounds,
            replicas,
            self._core.rank_quality.summary(),
        )

    async def shutdown(self) -> None:
        """Stop the replicas' engines (their actors die with this one)."""
        if self._health is not None:
            self._health.cancel()
        await asyncio.gather(
            *(h.shutdown.remote() for h in self._handles.values()), return_exceptions=True
        )

    # ---- internals ------------------------------------------------------------------------

    def _end(self, request_id: str, error: str | None) -> None:
        core = self._core
        try:
            request = core.get(request_id)
        except UnknownRequest:
            return
        if not request.state.is_terminal:
            if error is None:
                core.on_finished(request_id)
            else:
                core.on_failed(request_id, error)
        core.forget(request_id)
        self._tickets.pop(request_id, None)
        future = self._waiters.pop(request_id, None)
        if future is not None and not future.done():
            future.set_result(Ticket(request_id, request.num_dispatches, error=error or "ended"))

    def _schedule(self) -> None:
        for d in self._core.schedule():
            rid = d.request.request_id
            ticket = Ticket(
                rid,
                d.request.num_dispatches,
                d.replica_id,
                self._handles[d.replica_id],
                d.priority,
                d.max_new_tokens,
            )
            self._tickets[rid] = ticket
            future = self._waiters.pop(rid, None)
            if future is not None and not future.done():
                future.set_result(ticket)
        # Requests no replica could ever hold (context beyond every KV cache): fail them now.
        for request in self._core.take_rejected():
            self._end(request.request_id, error=request.error)


def replica_actor_name(replica_id: str) -> str:
    """Replica actors are named (in NAMESPACE) so operators can find them: `ray list actors`."""
    return f"rankserve-{replica_id}"


def _next_id(ids: list[str]) -> str:
    n = len(ids)
    while f"replica-{n}" in ids:
        n += 1
    return f"replica-{n}"


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
    import ray

    return (
        ray.remote(SchedulerActor)
        .options(**scheduler_actor_options(detached))
        .remote(config, replicas)
    )
