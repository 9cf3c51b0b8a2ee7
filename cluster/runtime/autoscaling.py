"""The scheduler actor's side of autoscaling (cluster.autoscaler): every `interval_s` it shows
the policy the core's queue and the fleet, starts replicas through the fleet (each asks Ray for
a GPU on GPU engines, which is what makes KubeRay's autoscaler add a node), drains the ones to
remove in the core, and removes them once idle or past the drain timeout (what still runs there
goes back to the queue and continues elsewhere with its prefix)."""

from __future__ import annotations

import asyncio
import logging
import time

from cluster.autoscaler import Autoscaler, FleetLoad, plan_change
from cluster.config import AutoscalingConfig
from cluster.runtime.fleet import ReplicaFleet
from cluster.scheduler import Scheduler

logger = logging.getLogger(__name__)


class FleetAutoscaling:
    def __init__(self, config: AutoscalingConfig, core: Scheduler, fleet: ReplicaFleet) -> None:
        self.config = config
        self._core = core
        self._fleet = fleet
        self.autoscaler = Autoscaler(config, len(fleet.specs))
        self._drain_since: dict[str, float] = {}
        self._growing: asyncio.Task | None = None

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.config.interval_s)
            try:
                self.look(time.monotonic())
            except Exception:  # a bad look must not end autoscaling
                logger.exception("autoscaling look failed")

    def look(self, now: float) -> None:
        core, fleet = self._core, self._fleet
        for replica_id in core.draining:
            since = self._drain_since.setdefault(replica_id, now)
            if core.is_idle(replica_id) or now - since >= self.config.drain_timeout_s:
                del self._drain_since[replica_id]
                fleet.retire(replica_id)
        draining = core.draining
        serving = [r for r in core.replica_ids if r not in draining]
        starting = len(set(fleet.specs) - set(fleet.handles))
        load = FleetLoad(
            now, len(core.queue), core.stats().finished, len(serving), starting, core.ongoing()
        )
        target = self.autoscaler.observe(load)
        if target is None:
            return
        plan = plan_change(target, serving, starting, draining)
        logger.warning(
            "autoscaling to %d replicas (estimated queue wait %.1f s, %d ongoing): %s",
            target,
            self.autoscaler.estimated_wait_s,
            load.ongoing,
            plan,
        )
        for replica_id in plan.undrain:
            core.undrain(replica_id)
            self._drain_since.pop(replica_id, None)
        for replica_id in plan.drain:
            core.drain(replica_id)
            self._drain_since[replica_id] = now
        if plan.start:
            # In the background: a replica takes its engine's start (and maybe a new node).
            self._growing = asyncio.create_task(fleet.scale(len(fleet.specs) + plan.start))
