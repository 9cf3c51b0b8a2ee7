"""The scheduler actor's once-a-second round: abort the requests of the ingresses whose lease
lapsed (cluster.runtime.leases) as "client gone", and run a scheduling round where queued
requests have a deadline (a round drops those past it). No Ray here: the actor hands in its
clock, its scheduling round and its abort.

A round that raises is logged and the loop goes on: this loop is the only thing that notices a
dead ingress, and one bad round (an abort of a request in an odd state) must not stop it for
the scheduler's whole life."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from cluster.clock import Clock
from cluster.runtime.leases import IngressLeases
from cluster.runtime.log_setup import NO_REQUEST, bind_request

logger = logging.getLogger(__name__)

CLIENT_GONE = "client gone"


class LeaseWatch:
    INTERVAL_S = 1.0

    def __init__(
        self,
        leases: IngressLeases,
        clock: Clock,
        schedule: Callable[[], None],
        abort: Callable[[str, str], Awaitable[None]],
        has_queue_deadline: Callable[[], bool],
    ) -> None:
        self.leases = leases
        self._clock = clock
        self._schedule = schedule
        self._abort = abort
        self._has_queue_deadline = has_queue_deadline

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.INTERVAL_S)
            try:
                await self.check()
            except Exception:  # noqa: BLE001 - see the module's docstring
                logger.exception("lease round failed; the next one runs in %.1f s", self.INTERVAL_S)
            finally:
                bind_request(NO_REQUEST)  # an abort bound this loop's lines to its request

    async def check(self) -> list[str]:
        """One round; returns the requests it aborted."""
        if self._has_queue_deadline():
            self._schedule()  # a round drops the requests past their queue deadline
        lapsed, gone = self.leases.lapse(self._clock.now())
        if not lapsed:
            return []
        logger.warning(
            "ingress lease lapsed (%s): aborting %d requests as %r",
            ", ".join(sorted(lapsed)),
            len(gone),
            CLIENT_GONE,
        )
        for rid in gone:
            await self._abort(rid, CLIENT_GONE)
        self._schedule()
        return gone
