"""What the scheduler actor remembers of the requests that ended: why, and the refusal when
admission control ended one, so that a late or repeated call about one is answered with that
instead of reviving it. Bounded: the oldest are forgotten first."""

from __future__ import annotations

from collections import OrderedDict

from cluster.admission import Refusal


class EndedRequests:
    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._why: OrderedDict[str, tuple[str, Refusal | None]] = OrderedDict()

    def remember(self, request_id: str, why: str, refusal: Refusal | None) -> None:
        self._why[request_id] = (why, refusal)
        while len(self._why) > self.capacity:
            self._why.popitem(last=False)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._why

    def __getitem__(self, request_id: str) -> tuple[str, Refusal | None]:
        return self._why[request_id]
