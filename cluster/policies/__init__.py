"""Scheduling policies, each a global request queue whose order is the policy. One line here
registers one; `PolicyConfig`, the CLIs and the errors take their names from `POLICIES`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cluster.policies.base import RequestQueue
from cluster.policies.edf import EDFQueue
from cluster.policies.fcfs import FCFSQueue
from cluster.policies.hrrn import HRRNQueue
from cluster.policies.ltr import LTRQueue
from cluster.policies.oracle import OracleQueue
from cluster.policies.slo import SLOQueue
from cluster.policies.ssjf import SSJFQueue
from cluster.registry import Registry

if TYPE_CHECKING:
    from cluster.config import PolicyConfig, SLOConfig
    from cluster.latency_model import LatencyModel

POLICIES: Registry[type[RequestQueue]] = Registry(
    "policy",
    {
        "fcfs": FCFSQueue,
        "oracle": OracleQueue,
        "ltr": LTRQueue,
        "ssjf": SSJFQueue,
        "hrrn": HRRNQueue,
        "edf": EDFQueue,
        "slo": SLOQueue,
    },
)


def make_queue(
    config: PolicyConfig, slos: SLOConfig | None = None, latency: LatencyModel | None = None
) -> RequestQueue:
    """The policy's queue; `slos` (None: the default classes) and `latency` (None: the
    policy's configured profile) reach only the SLO-aware policies."""
    from cluster.config import SLOConfig  # cluster.config imports this module

    return POLICIES[config.name].create(config, slos or SLOConfig(), latency)


__all__ = ["POLICIES", "RequestQueue", "make_queue"]
