"""The engine replica fleet: starts the replica actors (in parallel, named so operators find
them), watches their health, replaces dead ones, grows and shrinks the set. The scheduler actor
owns one and hears of each replica coming up (with a snapshot of what it serves) or going away
through two callbacks. Replicas are detached: a restarted scheduler's fleet reattaches to the
live ones by name instead of starting new ones."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import ray

from cluster.replicas import ReplicaLoad
from cluster.runtime.names import NAMESPACE, replica_actor_name, replica_id_of
from cluster.runtime.protocol import ReplicaInfo, ReplicaSnapshot
from cluster.runtime.replica import EngineReplica
from cluster.runtime.spec import ReplicaSpec

logger = logging.getLogger(__name__)

NAME_RETRIES = 60


def next_replica_id(ids: list[str]) -> str:
    n = len(ids)
    while f"replica-{n}" in ids:
        n += 1
    return f"replica-{n}"


def plan_scale(specs: list[ReplicaSpec], num_replicas: int) -> tuple[list[ReplicaSpec], list[str]]:
    """The specs after scaling to `num_replicas` (new ones copy the first spec), and the ids of
    the replicas to remove (the newest first go)."""
    if num_replicas < 1:
        raise ValueError("num_replicas must be >= 1")
    if not specs:
        raise ValueError("no replica to copy a spec from")
    kept = list(specs[:num_replicas])
    ids = [s.replica_id for s in specs]
    while len(kept) < num_replicas:
        new_id = next_replica_id(ids)
        ids.append(new_id)
        kept.append(dataclasses.replace(specs[0], replica_id=new_id))
    return kept, [s.replica_id for s in specs[num_replicas:]]


def plan_reconcile(
    current: list[ReplicaSpec], wanted: list[ReplicaSpec]
) -> tuple[list[str], list[ReplicaSpec]]:
    """For a (re)deployment: the replicas to remove (gone, or with changed settings) and the
    specs to start (new, or replacing a changed one)."""
    have = {s.replica_id: s for s in current}
    want = {s.replica_id: s for s in wanted}
    remove = [rid for rid, spec in have.items() if want.get(rid) != spec]
    add = [spec for rid, spec in want.items() if have.get(rid) != spec]
    return remove, add


class ReplicaFleet:
    HEALTH_INTERVAL_S = 2.0
    HEALTH_TIMEOUT_S = 10.0
    RETRY_PAUSE_S = 10.0  # between tries to start a missing replica

    def __init__(
        self,
        specs: list[ReplicaSpec],
        owner: Callable[[], Any],
        on_up: Callable[[ReplicaSnapshot], None],
        on_down: Callable[[str, str], None],
        replace_dead: bool = True,
        on_specs_change: Callable[[], None] = lambda: None,
    ) -> None:
        """`owner()` gives the scheduler actor's handle (known only once it runs), which
        replicas report to; `on_specs_change()` follows every change to the specs."""
        self.specs: dict[str, ReplicaSpec] = {s.replica_id: s for s in specs}
        self.handles: dict[str, Any] = {}
        self.infos: dict[str, ReplicaInfo] = {}
        self.loads: dict[str, ReplicaLoad] = {}  # as last reported
        self.nodes: dict[str, str] = {}  # replica -> Ray node id
        self._on_up = on_up
        self._on_down = on_down
        self._replace_dead = replace_dead
        self._starting: dict[str, asyncio.Task] = {}
        self._retry_at: dict[str, float] = {}  # missing replica -> when to try again
        self._health: asyncio.Task | None = None
        self._owner = owner
        self._specs_changed = on_specs_change

    async def attach_live(self) -> list[str]:
        """Reattach to the configured replicas that are running (under a restarted scheduler),
        each bounded by the health timeout; start nothing. Returns the replica ids attached."""
        specs = [s for s in self.specs.values() if s.replica_id not in self.handles]
        found = await asyncio.gather(*(self._attach(spec) for spec in specs))
        for spec, live in zip(specs, found, strict=True):
            if live is not None:
                self._up(spec, *live)
        return [spec.replica_id for spec, live in zip(specs, found, strict=True) if live]

    async def start(self) -> list[ReplicaInfo]:
        """Start every configured replica that is not running yet (in parallel); idempotent.
        Returns the capacities of the replicas now serving."""
        for replica_id, spec in self.specs.items():
            if replica_id not in self.handles and replica_id not in self._starting:
                self._starting[replica_id] = asyncio.create_task(self._start_replica(spec))
        if self._health is None:
            self._health = asyncio.create_task(self._health_loop())
        await self.settle()
        return list(self.infos.values())

    async def _start_replica(self, spec: ReplicaSpec) -> None:
        try:
            live = await self._attach(spec)
            handle = live[0] if live else await self._create(spec)
            snapshot = live[1] if live else await handle.snapshot.remote()
        except Exception:
            logger.exception("replica %s failed to start", spec.replica_id)
            raise
        finally:
            self._starting.pop(spec.replica_id, None)
        self._up(spec, handle, snapshot)

    def _up(self, spec: ReplicaSpec, handle: Any, snapshot: ReplicaSnapshot) -> None:
        self.handles[spec.replica_id] = handle
        self.infos[spec.replica_id] = snapshot.info
        self.loads[spec.replica_id] = snapshot.load
        self.nodes[spec.replica_id] = snapshot.node_id
        logger.info("replica %s up: %s", spec.replica_id, snapshot.info)
        self._on_up(snapshot)

    async def _attach(self, spec: ReplicaSpec) -> tuple[Any, ReplicaSnapshot] | None:
        """The live replica of that name if it has these settings (a scheduler restarted under
        it); None when there is none, or after killing one that differs or does not answer."""
        name = replica_actor_name(spec.replica_id)
        try:
            handle = ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            return None
        try:
            snapshot = await asyncio.wait_for(handle.snapshot.remote(), self.HEALTH_TIMEOUT_S)
            if snapshot.spec == spec:
                logger.info(
                    "replica %s reattached, serving %d requests",
                    spec.replica_id,
                    len(snapshot.dispatches),
                )
                return handle, snapshot
            why = "its settings differ"
        except Exception as exc:  # noqa: BLE001 - any failure to answer means replace it
            why = f"it does not answer ({type(exc).__name__})"
        logger.warning("replacing the running replica %s: %s", spec.replica_id, why)
        with contextlib.suppress(Exception):
            ray.kill(handle)
        return None

    async def _create(self, spec: ReplicaSpec) -> Any:
        cls = ray.remote(EngineReplica)
        name = replica_actor_name(spec.replica_id)
        for _ in range(NAME_RETRIES):
            try:
                return cls.options(name=name, namespace=NAMESPACE, **spec.actor_options()).remote(
                    spec, self._owner()
                )
            except ValueError:
                # The replica this one replaces was just killed: its name frees up shortly.
                await asyncio.sleep(0.5)
        raise RuntimeError(f"actor name {name} stays taken")

    async def adopt_running(self) -> list[str]:
        """Take into the fleet the live replicas it does not list (a restarted scheduler gets
        the specs it was created with; the replicas are the record of the fleet as it was, with
        every scale and redeployment since). Returns the replica ids adopted."""
        adopted = []
        for actor in ray.util.list_named_actors(all_namespaces=True):
            if actor["namespace"] != NAMESPACE:
                continue
            name = actor["name"]
            replica_id = replica_id_of(name)
            if replica_id is None or replica_id in self.specs:
                continue
            try:
                handle = ray.get_actor(name, namespace=NAMESPACE)
                snapshot = await asyncio.wait_for(handle.snapshot.remote(), self.HEALTH_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 - one that does not answer is not adopted
                logger.warning("replica %s left alone: %s", replica_id, type(exc).__name__)
                continue
            self.specs[replica_id] = snapshot.spec
            adopted.append(replica_id)
        if adopted:
            logger.warning("replicas taken back into the fleet: %s", ", ".join(adopted))
            self._specs_changed()
        return adopted

    async def settle(self) -> None:
        """Wait for the replicas being started now."""
        if self._starting:
            await asyncio.gather(*list(self._starting.values()), return_exceptions=True)

    async def scale(self, num_replicas: int) -> list[str]:
        """Grow or shrink the fleet; removed replicas hand their requests back to the queue
        (they continue elsewhere, with their prefix). Returns the replica ids after."""
        kept, removed = plan_scale(list(self.specs.values()), num_replicas)
        self.specs = {s.replica_id: s for s in kept}
        self._specs_changed()
        for replica_id in removed:
            self.drop(replica_id, "scaled down")
        await self.start()
        return list(self.specs)

    def retire(self, replica_id: str) -> None:
        """Remove one replica for good (autoscaling's scale-down, after its drain)."""
        self.specs.pop(replica_id, None)
        self._specs_changed()
        self.drop(replica_id, "scaled down")

    async def reconcile(self, wanted: list[ReplicaSpec]) -> list[ReplicaInfo]:
        """Bring the fleet to a (re)deployment's specs: changed replicas are replaced (their
        requests continue on the others meanwhile), missing ones started."""
        await self.settle()
        remove, add = plan_reconcile(list(self.specs.values()), wanted)
        for replica_id in remove:
            del self.specs[replica_id]
            self.drop(replica_id, "settings changed")
        for spec in add:
            self.specs[spec.replica_id] = spec
        self._specs_changed()
        return await self.start()

    def drop(self, replica_id: str, why: str) -> None:
        handle = self.handles.pop(replica_id, None)
        self.infos.pop(replica_id, None)
        self.loads.pop(replica_id, None)
        self.nodes.pop(replica_id, None)
        self._on_down(replica_id, why)
        if handle is not None:
            with contextlib.suppress(Exception):
                ray.kill(handle)

    async def check(self, replica_id: str) -> bool:
        """Whether the replica answers; one that does not is dropped (and replaced)."""
        handle = self.handles.get(replica_id)
        if handle is None:
            return False
        try:
            await asyncio.wait_for(handle.ping.remote(), self.HEALTH_TIMEOUT_S)
            return True
        except Exception as exc:  # noqa: BLE001 - any failure to answer means gone
            why = f"health check failed: {type(exc).__name__}"
        self.drop(replica_id, why)
        return False

    async def _health_loop(self) -> None:
        """Ping the replicas; bring up the configured ones that are missing (dead, or never
        started), as resources allow, with a pause after each failed try."""
        while True:
            await asyncio.sleep(self.HEALTH_INTERVAL_S)
            await asyncio.gather(*(self.check(r) for r in list(self.handles)))
            if not self._replace_dead:
                continue
            now = time.monotonic()
            for replica_id, spec in self.specs.items():
                if replica_id in self.handles or replica_id in self._starting:
                    continue
                if now < self._retry_at.get(replica_id, 0.0):
                    continue
                self._retry_at[replica_id] = now + self.RETRY_PAUSE_S
                logger.warning("replica %s is missing: starting it", replica_id)
                self._starting[replica_id] = asyncio.create_task(self._start_replica(spec))

    async def shutdown(self) -> None:
        """Stop the replicas' engines and their (detached) actors."""
        if self._health is not None:
            self._health.cancel()
        handles = list(self.handles.values())
        await asyncio.gather(*(h.shutdown.remote() for h in handles), return_exceptions=True)
        for handle in handles:
            with contextlib.suppress(Exception):
                ray.kill(handle)
        self.handles.clear()
