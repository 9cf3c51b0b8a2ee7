"""Ingress leases: each ingress renews its lease about every second; when one lapses (the
ingress died, and its clients with it) the scheduler aborts that ingress's requests as
"client gone". No Ray here: the scheduler actor feeds it its clock."""

from __future__ import annotations


class IngressLeases:
    def __init__(self, lease_s: float) -> None:
        self.lease_s = lease_s
        self._renewed: dict[str, float] = {}  # ingress id -> last renewal
        self._ingress_of: dict[str, str] = {}  # request id -> ingress id

    def renew(self, ingress_id: str, now: float) -> None:
        self._renewed[ingress_id] = now

    def track(self, request_id: str, ingress_id: str, now: float) -> None:
        """A request held by `ingress_id` (an empty id: a caller without a lease)."""
        if ingress_id:
            self._ingress_of[request_id] = ingress_id
            # One first heard of through a replica or a retry gets a full lease to renew it.
            self._renewed.setdefault(ingress_id, now)

    def forget(self, request_id: str) -> None:
        self._ingress_of.pop(request_id, None)

    def lapse(self, now: float) -> tuple[list[str], list[str]]:
        """(lapsed ingresses, their requests), forgetting both."""
        lapsed = [i for i, t in self._renewed.items() if now - t > self.lease_s]
        if not lapsed:
            return [], []
        gone = set(lapsed)
        requests = [rid for rid, i in self._ingress_of.items() if i in gone]
        for ingress in lapsed:
            del self._renewed[ingress]
        for rid in requests:
            del self._ingress_of[rid]
        return lapsed, requests
