"""The simulator's side of autoscaling (cluster.autoscaler): replicas it starts arrive after a
start-up time, replicas it removes drain first, and it counts the replica-seconds held (a
replica is held, and paid for, from its start to its removal)."""

from __future__ import annotations

import math
from collections.abc import Callable

from cluster.autoscaler import Autoscaler, FleetLoad, plan_change
from cluster.config import AutoscalingConfig
from cluster.scheduler import Scheduler
from cluster.sim.engine import SimulatedEngine


class SimAutoscaling:
    def __init__(
        self,
        config: AutoscalingConfig,
        startup_s: float,
        scheduler: Scheduler,
        engines: dict[str, SimulatedEngine],
        new_engine: Callable[[str], SimulatedEngine],
    ) -> None:
        """`engines`: the simulator's replicas by id, which this adds to and removes from;
        `new_engine(id)` makes one (the scheduler learns of it when it arrives)."""
        self.autoscaler = Autoscaler(config, len(engines))
        self.config = config
        self.startup_s = startup_s
        self._scheduler = scheduler
        self._engines = engines
        self._new_engine = new_engine
        self._next_id = len(engines)
        self._arriving: list[tuple[float, str]] = []
        self._drain_since: dict[str, float] = {}
        self._next_tick = 0.0
        self._last_t = 0.0
        self.replica_seconds = 0.0
        self.timeline: list[tuple[float, int]] = [(0.0, len(engines))]  # (time, replicas held)

    @property
    def held(self) -> int:
        return len(self._engines) + len(self._arriving)

    def next_event(self) -> float:
        return min([self._next_tick, *(t for t, _ in self._arriving)], default=math.inf)

    def advance(self, now: float, finished: int) -> list[SimulatedEngine]:
        """Bring the fleet to `now`: replicas that arrive join, drained ones go, and on a tick
        the policy looks. Returns the engines removed now."""
        self.replica_seconds += self.held * (now - self._last_t)
        self._last_t = now
        for t, replica_id in [a for a in self._arriving if a[0] <= now]:
            self._arriving.remove((t, replica_id))
            engine = self._new_engine(replica_id)
            self._engines[replica_id] = engine
            cfg = engine.config
            self._scheduler.add_replica(
                replica_id, cfg.max_num_seqs, engine.kv.num_blocks, cfg.block_size
            )
        removed = []
        for replica_id in self._scheduler.draining:
            since = self._drain_since[replica_id]
            if self._scheduler.is_idle(replica_id) or now - since >= self.config.drain_timeout_s:
                self._scheduler.remove_replica(replica_id)  # the rest continue elsewhere
                del self._drain_since[replica_id]
                removed.append(self._engines.pop(replica_id))
        if now >= self._next_tick:
            self._next_tick = now + self.config.interval_s
            self._look(now, finished)
        if self.timeline[-1][1] != self.held:
            self.timeline.append((now, self.held))
        return removed

    def _look(self, now: float, finished: int) -> None:
        scheduler = self._scheduler
        draining = scheduler.draining
        serving = [r for r in scheduler.replica_ids if r not in draining]
        load = FleetLoad(
            now,
            len(scheduler.queue),
            finished,
            len(serving),
            len(self._arriving),
            scheduler.ongoing(),
        )
        target = self.autoscaler.observe(load)
        if target is None:
            return
        plan = plan_change(target, serving, len(self._arriving), draining)
        for replica_id in plan.undrain:
            scheduler.undrain(replica_id)
            del self._drain_since[replica_id]
        for _ in range(plan.start):
            self._arriving.append((now + self.startup_s, f"r{self._next_id}"))
            self._next_id += 1
        for replica_id in plan.drain:
            scheduler.drain(replica_id)
            self._drain_since[replica_id] = now
