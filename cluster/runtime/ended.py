"""What the scheduler actor remembers of the requests that ended: finished, or failed and why
(with the refusal when admission control ended one), so that a late or repeated call about one
is answered with that instead of reviving it. Bounded: the oldest are forgotten first."""

from __future__ import annotations

from collections import OrderedDict

from cluster.admission import Refusal
from cluster.runtime.protocol import Ticket


class EndedRequests:
    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._why: OrderedDict[str, tuple[str | None, Refusal | None]] = OrderedDict()

    def remember(self, request_id: str, error: str | None, refusal: Refusal | None) -> None:
        """`error`: None for a request that finished."""
        self._why[request_id] = (error, refusal)
        while len(self._why) > self.capacity:
            self._why.popitem(last=False)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._why

    def refusal(self, request_id: str) -> Refusal | None:
        return self._why[request_id][1]

    def ticket(self, request_id: str, dispatch_no: int) -> Ticket:
        """The answer to its caller's wait for a dispatch: its end."""
        error, refusal = self._why[request_id]
        return Ticket(request_id, dispatch_no, error=error, refusal=refusal, finished=not error)
