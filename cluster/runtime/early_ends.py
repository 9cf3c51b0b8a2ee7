"""Carries the scheduler's preemptions (`EarlyEnd`s of cluster.swaps) to the replicas: each
victim's replica is asked to end that dispatch (`EngineReplica.preempt`), and its stream then
ends with PREEMPT, which its caller and the scheduler treat as a slice end.

Nothing waits for the answer. A preempt that does not get there (the replica died, or the call
failed) is logged and loses nothing: the dispatch runs on to its own end, or the fleet finds the
replica gone and requeues the request; the swap it was for is settled either way, once the
victim has left that replica (Swaps.freed). A stale one (the dispatch ended meanwhile) is
ignored by the replica. No Ray here: the handles' `.remote` results are awaited as they come."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from cluster.swaps import EarlyEnd

logger = logging.getLogger(__name__)


class EarlyEndDelivery:
    def __init__(self, handles: dict[str, Any]) -> None:
        self._handles = handles  # replica id -> actor handle (the fleet's, kept current)
        self._sending: set[asyncio.Task] = set()
        self.sent = 0
        self.undelivered = 0

    def send(self, end: EarlyEnd, dispatch_no: int) -> None:
        """Ask `end`'s replica to end the request's dispatch `dispatch_no` (call in the
        actor's event loop)."""
        handle = self._handles.get(end.replica_id)
        if handle is None:
            self._lost(end, dispatch_no, "replica not in the fleet")
            return
        task = asyncio.get_running_loop().create_task(self._send(handle, end, dispatch_no))
        self._sending.add(task)  # a reference, so that the task runs to its end
        task.add_done_callback(self._sending.discard)

    async def _send(self, handle: Any, end: EarlyEnd, dispatch_no: int) -> None:
        try:
            ended = await handle.preempt.remote(end.request_id, dispatch_no)
        except Exception as exc:  # noqa: BLE001 - any failure: the request is not lost
            self._lost(end, dispatch_no, f"{type(exc).__name__}: {exc}")
            return
        self.sent += 1
        if not ended:
            logger.info(
                "%s: dispatch %d had already ended on %s; preempt ignored",
                end.request_id,
                dispatch_no,
                end.replica_id,
            )

    def _lost(self, end: EarlyEnd, dispatch_no: int, why: str) -> None:
        self.undelivered += 1
        logger.warning(
            "%s: preempt of dispatch %d not delivered to %s (%s); it runs to its own end",
            end.request_id,
            dispatch_no,
            end.replica_id,
            why,
        )
