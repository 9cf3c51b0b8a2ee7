"""Scheduling policies, each a global request queue whose order is the policy. One line here
registers one; `PolicyConfig`, the CLIs and the errors take their names from `POLICIES`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cluster.policies.base import RequestQueue
from cluster.policies.fcfs import FCFSQueue
from cluster.policies.hrrn import HRRNQueue
from cluster.policies.ltr import LTRQueue
from cluster.policies.oracle import OracleQueue
from cluster.policies.ssjf import SSJFQueue
from cluster.registry import Registry

if TYPE_CHECKING:
    from cluster.config import PolicyConfig

POLICIES: Registry[type[RequestQueue]] = Registry(
    "policy",
    {
        "fcfs": FCFSQueue,
        "oracle": OracleQueue,
        "ltr": LTRQueue,
        "ssjf": SSJFQueue,
        "hrrn": HRRNQueue,
    },
)


def make_queue(config: PolicyConfig) -> RequestQueue:
    return POLICIES[config.name](config)


__all__ = ["POLICIES", "RequestQueue", "make_queue"]
