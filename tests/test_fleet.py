"""The replica fleet's plans, without Ray: which replicas a scale or a redeployment keeps, adds
and removes."""

from __future__ import annotations

import dataclasses

import pytest

from cluster.config import EngineConfig
from cluster.runtime.fleet import next_replica_id, plan_reconcile, plan_scale
from cluster.runtime.spec import ReplicaConfig, replica_specs


def specs(n: int, **engine):
    return replica_specs("/m", EngineConfig(**engine), ReplicaConfig(), n)


def test_scaling_up_copies_the_first_spec_under_fresh_names():
    kept, removed = plan_scale(specs(2), 4)
    assert [s.replica_id for s in kept] == ["replica-0", "replica-1", "replica-2", "replica-3"]
    assert removed == []
    assert all(
        dataclasses.replace(s, replica_id="x") == dataclasses.replace(kept[0], replica_id="x")
        for s in kept
    )


def test_scaling_down_removes_the_newest():
    kept, removed = plan_scale(specs(4), 1)
    assert [s.replica_id for s in kept] == ["replica-0"]
    assert removed == ["replica-1", "replica-2", "replica-3"]


def test_new_names_never_reuse_a_live_one():
    assert next_replica_id(["replica-0", "replica-2"]) == "replica-3"
    fleet = [s for s in specs(3) if s.replica_id != "replica-1"]  # replica-1 was dropped
    kept, _ = plan_scale(fleet, 3)
    assert [s.replica_id for s in kept] == ["replica-0", "replica-2", "replica-3"]


@pytest.mark.parametrize("n", [0, -1])
def test_a_fleet_cannot_shrink_to_nothing(n):
    with pytest.raises(ValueError, match=">= 1"):
        plan_scale(specs(2), n)


def test_a_redeploy_replaces_only_what_changed():
    current = specs(3, max_num_seqs=8)
    same = plan_reconcile(current, current)
    assert same == ([], [])
    changed = specs(2, max_num_seqs=16)  # other engine settings, one replica fewer
    remove, add = plan_reconcile(current, changed)
    assert remove == ["replica-0", "replica-1", "replica-2"]
    assert [s.replica_id for s in add] == ["replica-0", "replica-1"]
    assert all(s.engine.max_num_seqs == 16 for s in add)
    grown = specs(4, max_num_seqs=8)
    assert plan_reconcile(current, grown) == ([], [grown[3]])
