"""Ingress leases: each ingress renews its lease about every second; when one lapses (the
ingress died, and its clients with it) the scheduler aborts that ingress's requests as
"client gone". No Ray here: the scheduler actor feeds it its clock.

A lease measures an ingress's silence only while the scheduler listens: none runs before the
scheduler opens them (at the end of its boot, when its calls are let in: a restarted scheduler
first hears of the ingresses through the replicas' snapshots, while their renewals wait for the
boot), and every lease starts afresh after the scheduler itself stalled (its checks came late:
the renewals sent meanwhile are still queued behind the stall, not missing)."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


class IngressLeases:
    def __init__(self, lease_s: float, stall_s: float | None = None) -> None:
        self.lease_s = lease_s
        # A gap between two checks past this is the scheduler not listening (checks are ~1 s).
        self.stall_s = lease_s / 2 if stall_s is None else stall_s
        self._renewed: dict[str, float] = {}  # ingress id -> last renewal
        self._ingress_of: dict[str, str] = {}  # request id -> ingress id
        self._checked: float | None = None  # the last check; None until opened

    def open(self, now: float) -> None:
        """The scheduler listens from `now`: every known ingress gets a full lease."""
        self._checked = now
        for ingress in self._renewed:
            self._renewed[ingress] = now

    def renew(self, ingress_id: str, now: float) -> None:
        """`ingress_id` is alive (it renewed, or called in; an empty id: a caller without a
        lease)."""
        if ingress_id:
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
        """(lapsed ingresses, their requests), forgetting both. Called about every second."""
        if self._checked is None:
            return [], []
        if now - self._checked > self.stall_s:
            logger.warning(
                "lease checks %.1f s apart (the scheduler stalled): every lease starts afresh",
                now - self._checked,
            )
            self.open(now)
            return [], []
        self._checked = now
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
