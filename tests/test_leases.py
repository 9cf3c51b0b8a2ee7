"""Ingress leases, without Ray: an ingress that stops renewing loses its requests, one that
renews (or calls in) keeps them; no lease runs before the scheduler opens them at the end of its
boot, and a stalled scheduler (checks far apart) starts every lease afresh instead of lapsing
the ingresses whose renewals were queued behind the stall."""

from __future__ import annotations

from cluster.runtime.leases import IngressLeases


def checks(leases: IngressLeases, start: float, end: float) -> list:
    """The scheduler's lease loop: a check every second over [start, end]; what lapsed."""
    seen, t = [], start
    while t <= end:
        lapsed, requests = leases.lapse(t)
        if lapsed:
            seen.append((t, lapsed, requests))
        t += 1.0
    return seen


def test_a_lapsed_ingress_gives_up_exactly_its_requests():
    leases = IngressLeases(lease_s=5.0)
    leases.open(0.0)
    leases.renew("alive", 0.0)
    leases.renew("dead", 0.0)
    leases.track("a1", "alive", 0.0)
    leases.track("d1", "dead", 0.0)
    leases.track("d2", "dead", 0.0)
    leases.track("anon", "", 0.0)  # no lease: never lapses
    for t in (2.0, 4.0):
        leases.renew("alive", t)
    assert checks(leases, 1.0, 5.0) == []  # not past the lease yet
    assert checks(leases, 6.0, 6.0) == [(6.0, ["dead"], ["d1", "d2"])]
    assert checks(leases, 7.0, 9.0) == []  # forgotten once lapsed; "alive" renewed at 4
    assert checks(leases, 10.0, 12.0) == [(10.0, ["alive"], ["a1"])]


def test_a_finished_request_is_not_aborted_and_a_late_tracked_one_gets_a_full_lease():
    leases = IngressLeases(lease_s=5.0)
    leases.open(0.0)
    leases.track("done", "i", 0.0)
    leases.forget("done")
    assert checks(leases, 1.0, 9.0) == [(6.0, ["i"], [])]  # its one request ended
    leases.track("adopted", "j", 10.0)  # heard of from a replica at t=10
    assert checks(leases, 10.0, 16.0) == [(16.0, ["j"], ["adopted"])]


def test_a_restarted_scheduler_runs_no_lease_before_its_boot_ends():
    """The restarted scheduler learns of the ingresses from the replicas' snapshots at t=0, and
    its boot (attaching the replicas) ends at t=8: the ingresses' renewals waited behind it. No
    lease lapses before, and each gets a full one from the boot's end."""
    leases = IngressLeases(lease_s=5.0)
    leases.track("r1", "ingress-a", 0.0)
    leases.track("r2", "ingress-b", 0.0)
    assert checks(leases, 1.0, 8.0) == []  # not opened: nobody could renew yet
    leases.open(8.0)
    leases.renew("ingress-a", 8.1)  # a's renewals resume at once; b's ingress is dead
    for t in range(9, 20):
        leases.renew("ingress-a", float(t))
    assert checks(leases, 9.0, 19.0) == [(14.0, ["ingress-b"], ["r2"])]


def test_a_scheduler_stall_starts_every_lease_afresh():
    """The scheduler's loop stalls from t=3 to t=12 (no check, no renewal heard): the renewals
    sent meanwhile are queued, not missing, so nobody lapses at the first check after it; an
    ingress that stays silent after the stall still lapses a full lease later."""
    leases = IngressLeases(lease_s=5.0)
    leases.open(0.0)
    leases.track("r1", "alive", 0.0)
    leases.track("r2", "dead", 0.0)
    for t in (0.0, 1.0, 2.0, 3.0):
        leases.renew("alive", t)
    assert checks(leases, 1.0, 3.0) == []
    assert checks(leases, 12.0, 12.0) == []  # 9 s apart: the stall, not a lapse
    for t in range(12, 20):
        leases.renew("alive", float(t))
    assert checks(leases, 13.0, 19.0) == [(18.0, ["dead"], ["r2"])]


def test_a_call_from_an_ingress_renews_its_lease_and_an_empty_id_has_none():
    leases = IngressLeases(lease_s=5.0)
    leases.open(0.0)
    leases.track("r1", "i", 0.0)
    leases.renew("", 1.0)  # a caller without a lease: nothing to renew
    leases.renew("i", 4.0)  # its wait_dispatch call came in
    assert checks(leases, 1.0, 9.0) == []
    assert checks(leases, 10.0, 10.0) == [(10.0, ["i"], ["r1"])]
