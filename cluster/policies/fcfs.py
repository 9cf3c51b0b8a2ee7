"""First come, first served: the baseline every LLM server ships."""

from __future__ import annotations

from cluster.policies.base import StaticKeyQueue
from cluster.request import Request


class FCFSQueue(StaticKeyQueue):
    def key(self, request: Request) -> float:
        return float(request.seq)
