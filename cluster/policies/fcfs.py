"""First come, first served: the baseline every LLM server ships. By arrival time (ties by
arrival order), so that a request a restarted scheduler takes back keeps its place."""

from __future__ import annotations

from cluster.policies.base import StaticKeyQueue
from cluster.request import Request


class FCFSQueue(StaticKeyQueue):
    def key(self, request: Request) -> float:
        return request.arrival_time
