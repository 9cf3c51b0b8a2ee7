"""Admission control: the global queue is bounded, so that overload is answered at once (HTTP 429
with Retry-After, gRPC RESOURCE_EXHAUSTED) instead of by a queue that grows without end and
latencies that grow with it (SGLang's router and Ray Serve's `max_queued_requests` do the same).

Three bounds, each optional (`AdmissionConfig`):
- a count of queued requests;
- the queue's expected drain time, the longer of two estimates: the tokens it still has to
  produce (each request's predicted length, else its max_tokens) over the cluster's measured
  token rate, and its length over the measured completion rate. This bounds the wait of
  whoever is admitted, whatever the order;
- a queue deadline: a request still waiting for its first dispatch after `queue_timeout_s` is
  answered 408 (it has streamed nothing yet).
With tenant weights, a full queue sheds the tenant furthest over its weighted share first: a
request of a tenant within its share takes the place of the newest never-dispatched request of
the tenant most over its share. Before these, optionally, a request whose SLO no replica could
meet is refused or demoted (`cluster.slo_admission`, reason `slo_unreachable`).
"""

from __future__ import annotations

import enum
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from cluster.config import AdmissionConfig
from cluster.request import Request
from cluster.service_rate import ServiceRate


class ShedReason(enum.Enum):
    QUEUE_FULL = "queue_full"
    WAIT_TOO_LONG = "wait_too_long"
    TENANT_OVER_SHARE = "tenant_over_share"
    QUEUE_TIMEOUT = "queue_timeout"
    SLO_UNREACHABLE = "slo_unreachable"  # cluster.slo_admission

    @property
    def http_status(self) -> int:
        return 408 if self is ShedReason.QUEUE_TIMEOUT else 429


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request was not served, and when its client may try again."""

    reason: ShedReason
    message: str
    retry_after_s: float


@dataclass(frozen=True, slots=True)
class AdmissionDecision:
    refusal: Refusal | None = None  # the new request is refused
    evict: Request | None = None  # admitted in place of this queued request (tenant shares)


RETRY_AFTER_MIN_S = 1.0
RETRY_AFTER_MAX_S = 60.0


class AdmissionControl:
    def __init__(self, config: AdmissionConfig) -> None:
        self.config = config

    def decide(
        self, request: Request, queued: Sequence[Request], rate: ServiceRate, now: float
    ) -> AdmissionDecision:
        full = self._over_bound(request, queued, rate, now)
        if full is None:
            return AdmissionDecision()
        victim = self._over_share_victim(request, queued)
        if victim is not None:
            return AdmissionDecision(evict=victim)
        return AdmissionDecision(refusal=full)

    def expired(self, queued: Sequence[Request], now: float) -> list[Request]:
        """Requests waiting for their first dispatch for longer than the queue deadline."""
        limit = self.config.queue_timeout_s
        if limit is None:
            return []
        return [r for r in queued if r.num_dispatches == 0 and now - r.arrival_time > limit]

    def timeout_refusal(self, request: Request, now: float) -> Refusal:
        return Refusal(
            ShedReason.QUEUE_TIMEOUT,
            f"waited {now - request.arrival_time:.1f} s in the queue without being served "
            f"(queue_timeout_s={self.config.queue_timeout_s})",
            RETRY_AFTER_MIN_S,
        )

    def eviction_refusal(self, request: Request) -> Refusal:
        return Refusal(
            ShedReason.TENANT_OVER_SHARE,
            f"the queue is full and tenant {request.tenant or '(none)'} holds more than its "
            "share of it",
            RETRY_AFTER_MIN_S,
        )

    # ---- internals ------------------------------------------------------------------------

    def _over_bound(
        self, request: Request, queued: Sequence[Request], rate: ServiceRate, now: float
    ) -> Refusal | None:
        cfg = self.config
        if cfg.max_queued is not None and len(queued) >= cfg.max_queued:
            per_s = rate.completions_per_s(now)
            excess = len(queued) - cfg.max_queued + 1
            return Refusal(
                ShedReason.QUEUE_FULL,
                f"the queue is full ({len(queued)} requests waiting, max_queued={cfg.max_queued})",
                retry_after(excess / per_s if per_s else None),
            )
        if cfg.max_queue_wait_s is None:
            return None
        # Two estimates, the longer one holds: the queue's predicted tokens over the token
        # rate (knows that short answers drain fast), and its length over the completion rate
        # (needs no prediction: a scorer that predicts too short cannot let the queue grow).
        estimates = []
        if (tokens_per_s := rate.tokens_per_s(now)) is not None:
            work = sum(expected_tokens(r) for r in queued) + expected_tokens(request)
            estimates.append((work / tokens_per_s, f"{tokens_per_s:.0f} tokens/s"))
        if (per_s := rate.completions_per_s(now)) is not None:
            estimates.append(((len(queued) + 1) / per_s, f"{per_s:.1f} requests/s"))
        if not estimates:
            return None  # no measured rate yet: only the count bound holds
        wait, at = max(estimates)
        if wait <= cfg.max_queue_wait_s:
            return None
        return Refusal(
            ShedReason.WAIT_TOO_LONG,
            f"the queue would take about {wait:.0f} s to drain at the current {at} "
            f"(max_queue_wait_s={cfg.max_queue_wait_s:g})",
            retry_after(wait - cfg.max_queue_wait_s),
        )

    def _over_share_victim(self, request: Request, queued: Sequence[Request]) -> Request | None:
        weights = self.config.tenant_weights()
        if not weights:
            return None
        counts = Counter(r.tenant for r in queued)
        counts[request.tenant] += 1
        total = sum(counts.values())
        weight_sum = sum(weights.get(t, self.config.default_tenant_weight) for t in counts)

        def excess(tenant: str | None) -> float:
            share = weights.get(tenant, self.config.default_tenant_weight) / weight_sum
            return counts[tenant] / total - share

        if excess(request.tenant) > 0:
            return None
        over = max((t for t in counts if t != request.tenant), key=excess, default=None)
        if over is None or excess(over) <= 0:
            return None
        candidates = [r for r in queued if r.tenant == over and r.num_dispatches == 0]
        return max(candidates, key=lambda r: r.seq, default=None)


def expected_tokens(request: Request) -> float:
    """Tokens a queued request still has to produce, as far as the scheduler can tell."""
    total = request.max_tokens
    if request.predicted_tokens is not None and math.isfinite(request.predicted_tokens):
        total = min(total, max(1.0, request.predicted_tokens))
    return max(0.0, total - request.generated)


def retry_after(estimate_s: float | None) -> float:
    if estimate_s is None:
        return RETRY_AFTER_MIN_S
    return float(min(RETRY_AFTER_MAX_S, max(RETRY_AFTER_MIN_S, math.ceil(estimate_s))))
