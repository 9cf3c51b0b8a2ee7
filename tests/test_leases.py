"""Ingress leases, without Ray: an ingress that stops renewing loses its requests, one that
renews keeps them, and a request first heard of after a restart gets a full lease."""

from __future__ import annotations

from cluster.runtime.leases import IngressLeases


def test_a_lapsed_ingress_gives_up_exactly_its_requests():
    leases = IngressLeases(lease_s=5.0)
    leases.renew("alive", 0.0)
    leases.renew("dead", 0.0)
    leases.track("a1", "alive", 0.0)
    leases.track("d1", "dead", 0.0)
    leases.track("d2", "dead", 0.0)
    leases.track("anon", "", 0.0)  # no lease: never lapses
    for t in (2.0, 4.0, 6.0):
        leases.renew("alive", t)
    assert leases.lapse(5.0) == ([], [])  # not past the lease yet
    assert leases.lapse(6.5) == (["dead"], ["d1", "d2"])
    assert leases.lapse(6.5) == ([], [])  # forgotten once lapsed
    assert leases.lapse(11.5) == (["alive"], ["a1"])


def test_a_finished_request_is_not_aborted_and_a_late_tracked_one_gets_a_full_lease():
    leases = IngressLeases(lease_s=5.0)
    leases.track("done", "i", 0.0)
    leases.forget("done")
    leases.track("adopted", "j", 10.0)  # after a restart: heard of from a replica at t=10
    assert leases.lapse(14.0) == (["i"], [])  # its one request ended: nothing to abort
    assert leases.lapse(15.5) == (["j"], ["adopted"])
