"""The token counts callers hold for dispatches whose end their replica has not reported yet.

A caller (the ingress) that is done with dispatch `n` asks for the next one with the tokens its
client holds. When that call comes before the replica's report of the dispatch's end, the core
cannot take the count yet (the dispatch still runs there); it is kept here and applied once the
report arrives: the caller's count holds over the scheduler's (reports can be lost at a
restart). No Ray here."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from cluster.request import Request
from cluster.scheduler import Scheduler, UnknownRequest

logger = logging.getLogger(__name__)


class CallerCounts:
    def __init__(self) -> None:
        self._held: dict[str, tuple[int, int]] = {}  # request -> (dispatch no, tokens held)

    def hold(self, request_id: str, dispatch_no: int, delivered: int) -> None:
        self._held[request_id] = (dispatch_no, delivered)

    def forget(self, request_id: str) -> None:
        self._held.pop(request_id, None)

    def settle(self, core: Scheduler, ended: Iterable[str]) -> list[Request]:
        """Dispatches of `ended` requests were reported over: where a caller's count was held
        for exactly that dispatch, the core continues from it. Returns the requests that count
        finished (their callers hold all their tokens)."""
        finished = []
        for rid in set(ended) & self._held.keys():
            dispatch_no, delivered = self._held.pop(rid)
            try:
                request = core.get(rid)
            except UnknownRequest:
                continue
            if request.num_dispatches == dispatch_no and core.resume_from(rid, delivered):
                logger.warning("%s: token count set to its caller's %d", rid, delivered)
                if request.state.is_terminal:
                    finished.append(request)
        return finished
