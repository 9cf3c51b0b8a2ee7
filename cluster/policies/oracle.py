"""Shortest remaining true output first: the bound for any length-based order. Only the
simulator and benchmarks with forced lengths know true lengths."""

from __future__ import annotations

from cluster.policies.base import StaticKeyQueue
from cluster.request import Request


class OracleQueue(StaticKeyQueue):
    def key(self, request: Request) -> float:
        if request.output_tokens is None:
            raise ValueError(f"oracle policy needs the true output length of {request.request_id}")
        return float(request.remaining_tokens)
