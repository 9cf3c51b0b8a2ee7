"""Earliest deadline first: by the time the request's first token is due under its SLO class
(arrival + e2e_s for an end-to-end class, arrival + ttft_s for a TTFT + TPOT one). The
baseline for the `slo` policy: deadline-aware, blind to how long each request will take."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cluster.policies.base import StaticKeyQueue
from cluster.request import Request

if TYPE_CHECKING:
    from cluster.config import PolicyConfig, SLOConfig
    from cluster.latency_model import LatencyModel


class EDFQueue(StaticKeyQueue):
    def __init__(self, config: PolicyConfig, slos: SLOConfig) -> None:
        super().__init__(config)
        self.slos = slos

    @classmethod
    def create(
        cls, config: PolicyConfig, slos: SLOConfig, latency: LatencyModel | None
    ) -> EDFQueue:
        return cls(config, slos)

    def key(self, request: Request) -> float:
        return self.slos.get(request.slo).first_token_deadline(request.arrival_time)
