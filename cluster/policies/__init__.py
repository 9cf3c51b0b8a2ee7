"""Scheduling policies, each a global request queue whose order is the policy."""

from __future__ import annotations

from cluster.config import PolicyConfig
from cluster.policies.base import RequestQueue
from cluster.policies.fcfs import FCFSQueue
from cluster.policies.hrrn import HRRNQueue
from cluster.policies.ltr import LTRQueue
from cluster.policies.oracle import OracleQueue
from cluster.policies.ssjf import SSJFQueue

_QUEUES: dict[str, type[RequestQueue]] = {
    "fcfs": FCFSQueue,
    "oracle": OracleQueue,
    "ltr": LTRQueue,
    "ssjf": SSJFQueue,
    "hrrn": HRRNQueue,
}


def make_queue(config: PolicyConfig) -> RequestQueue:
    return _QUEUES[config.name](config)


__all__ = ["RequestQueue", "make_queue"]
