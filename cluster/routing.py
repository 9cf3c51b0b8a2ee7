"""Which replica gets a request. `kv_balanced` is rankserve's: one with headroom (a running slot
and enough free KV blocks), the least KV-loaded first, so that KV pressure stays balanced across
the cluster. `power_of_two` is the baseline it is measured against, Ray Serve's default router:
each request goes at once to the less busy of two random replicas, which queues it itself (vLLM
orders its waiting requests by the dispatched priority, so a policy still orders each replica's
queue)."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Protocol

from cluster.prefix_routing import PrefixAffinityRouting, PrefixAwareRouting
from cluster.registry import Registry
from cluster.replicas import ReplicaView
from cluster.request import Request

if TYPE_CHECKING:
    from cluster.config import SchedulerConfig


class Routing(Protocol):
    """Chooses replicas for the requests of one scheduling round, taken in policy order."""

    def has_room(self, replicas: list[ReplicaView]) -> bool:
        """Whether any request could be placed this round (else the round is skipped)."""
        ...

    def choose(self, replicas: list[ReplicaView], request: Request) -> ReplicaView | None:
        """The replica for `request`, whose context (prompt plus generated prefix) is
        `request.context` tokens long; None when none has room for it now. The round stops at
        the first None, so that no request overtakes a better-ranked one, unless no replica
        could ever hold it. The request is dispatched where this says (a routing that learns
        from its placements records them here)."""
        ...

    def fits(self, view: ReplicaView, request: Request) -> bool:
        """Whether `choose` would find room for `request` on `view` now (nothing recorded)."""
        ...


class KVBalancedRouting:
    """The global queue's routing: strict policy order, least KV-loaded replica with room. A
    request back from a slice end or a preemption resumes on the replica it ran on when that
    one has room, where its context is likely still cached (else it moves and recomputes)."""

    def __init__(self, config: SchedulerConfig) -> None:
        self.headroom = config.kv_headroom_fraction
        self.max_engine_waiting = config.max_engine_waiting

    def has_room(self, replicas: list[ReplicaView]) -> bool:
        return any(v.has_slot(self.max_engine_waiting) for v in replicas)

    def fits(self, view: ReplicaView, request: Request) -> bool:
        return view.has_room(request.context, self.headroom, self.max_engine_waiting)

    def choose(self, replicas: list[ReplicaView], request: Request) -> ReplicaView | None:
        best, best_free = None, -1.0
        for view in replicas:
            if not self.fits(view, request):
                continue
            if view.replica_id == request.last_replica_id:
                return view
            free_fraction = view.free_blocks / view.total_kv_blocks
            if free_fraction > best_free:
                best, best_free = view, free_fraction
        return best


class PowerOfTwoRouting:
    """Ray Serve's default: of two replicas drawn at random, the one with fewer requests
    assigned (running or queued there). No headroom check: the replica queues what it cannot
    run yet; None only when no replica's cache could ever hold the request."""

    def __init__(self, config: SchedulerConfig) -> None:
        self.headroom = config.kv_headroom_fraction
        self.rng = random.Random(config.routing_seed)

    def has_room(self, replicas: list[ReplicaView]) -> bool:
        return True

    def fits(self, view: ReplicaView, request: Request) -> bool:
        return view.can_ever_hold(request.context, self.headroom)  # the replica queues it

    def choose(self, replicas: list[ReplicaView], request: Request) -> ReplicaView | None:
        usable = [v for v in replicas if self.fits(v, request)]
        if not usable:
            return None
        picked = self.rng.sample(usable, min(2, len(usable)))
        return min(picked, key=lambda v: len(v.assigned))


# global: the scheduler holds the only long queue (rankserve); power_of_two: the baseline;
# prefix_aware: global, placing by prefix cache hits too; prefix_affinity: its baseline.
ROUTINGS: Registry[type[Routing]] = Registry(
    "routing",
    {
        "global": KVBalancedRouting,
        "power_of_two": PowerOfTwoRouting,
        "prefix_aware": PrefixAwareRouting,
        "prefix_affinity": PrefixAffinityRouting,
    },
)


def make_routing(config: SchedulerConfig) -> Routing:
    return ROUTINGS[config.routing](config)
