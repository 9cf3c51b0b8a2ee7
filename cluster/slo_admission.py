"""SLO-aware admission (issue 12; llm-d sheds the same way): a request whose SLO no replica could
meet, even if it went to the head of the queue now, is refused at once (429 `slo_unreachable`,
with Retry-After) or demoted to a best-effort class (`AdmissionConfig.slo_unreachable`), rather
than queued to miss its SLO while it holds a slot that a request which can still meet its own
would have used. What it is judged by is goodput.

The estimate is the `slo` policy's latency model (`cluster.latency_model`, the same step-time
profile) at its most optimistic, per replica:
  start   0 if the replica has a free slot (fewer requests than its limit: the `slo` policy's
          concurrency limit, else max_num_seqs), else when the first of its requests is
          predicted to end (its remaining predicted tokens at the replica's decode step);
  ttft    the time it has waited + start + its prefill;
  tpot    the decode step at the replica's batch with it;
  e2e     ttft + its predicted tokens (else max_tokens) x tpot.
Queued requests are left out (a policy may put it ahead of all of them), so a request is turned
away only when no order could serve it in time on any replica: for an e2e class when every
replica's e2e is over e2e_s, for a TTFT + TPOT class when every replica is over ttft_s or tpot_s.
With no replica serving there is nothing to estimate from, and the request is admitted.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cluster.admission import Refusal, ShedReason, expected_tokens, retry_after
from cluster.config import SchedulerConfig, SLOClass
from cluster.latency_model import LatencyModel, quantized_context
from cluster.replicas import ReplicaView
from cluster.request import Request

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Estimate:
    """A request's latency on one replica were it dispatched there as soon as a slot frees."""

    replica_id: str
    start_s: float  # until it could be dispatched there
    ttft_s: float  # from its arrival
    tpot_s: float
    e2e_s: float  # from its arrival

    def meets(self, slo: SLOClass) -> bool:
        return slo.met(self.ttft_s, self.tpot_s, self.e2e_s)

    def shortfall(self, slo: SLOClass) -> float:
        """How far over its bounds, as a ratio (<= 1: met); the closest replica is named."""
        if slo.e2e_s is not None:
            return self.e2e_s / slo.e2e_s
        return max(self.ttft_s / slo.ttft_s, self.tpot_s / slo.tpot_s)


class SLOAdmission:
    """Screens arrivals under the scheduler's config of the moment, and counts what it demoted
    over the scheduler's life (it outlives `reconfigure`)."""

    def __init__(self, latency: LatencyModel | None) -> None:
        """`latency`: the engines' step times (the simulator's profile); None: those of the
        policy config's `slo_search.profile`, loaded at the first estimate (as the `slo` policy
        and the preemption's cost model do)."""
        self._latency = latency
        self._named: dict[str, LatencyModel] = {}
        self.demoted = 0

    def latency(self, config: SchedulerConfig) -> LatencyModel:
        if self._latency is not None:
            return self._latency
        profile = config.policy.slo_search.profile
        if profile not in self._named:
            self._named[profile] = LatencyModel.named(profile)
        return self._named[profile]

    def screen(
        self,
        request: Request,
        config: SchedulerConfig,
        replicas: Sequence[ReplicaView],
        requests: Mapping[str, Request],
        now: float,
    ) -> Refusal | None:
        """The refusal to answer `request` with, or None to admit it, in demote mode with its
        `slo` set to the best-effort class where its own is out of reach."""
        mode = config.admission.slo_unreachable
        if mode == "off" or not replicas:
            return None
        slo = config.slo.get(request.slo)
        best_effort = config.admission.best_effort_class
        if mode == "demote" and slo.name == best_effort:
            return None  # already best effort: nothing lower to put it in
        latency = self.latency(config)
        estimates = [estimate(request, v, requests, now, latency) for v in replicas]
        if any(e.meets(slo) for e in estimates):
            return None
        best = min(estimates, key=lambda e: e.shortfall(slo))
        why = _explain(slo, best, len(estimates))
        if mode == "reject":
            return Refusal(ShedReason.SLO_UNREACHABLE, why, retry_after(best.start_s))
        # Once per request, at debug: under overload every arrival may be demoted.
        logger.debug("%s demoted to SLO class %s: %s", request.request_id, best_effort, why)
        request.slo = best_effort
        self.demoted += 1
        return None


def estimate(
    request: Request,
    view: ReplicaView,
    requests: Mapping[str, Request],
    now: float,
    latency: LatencyModel,
) -> Estimate:
    """`request` on `view`'s replica, dispatched there as soon as a slot frees."""
    held = [requests[rid] for rid in sorted(view.assigned)]  # sorted: a seed, one result
    limit = min(view.max_num_seqs, view.slot_limit or view.max_num_seqs)
    batch = min(len(held) + 1, limit)
    tokens = max(1.0, expected_tokens(request))
    # The context a decode step reads: the mean over the batch it would join, halfway
    # through each answer (as the `slo` policy takes it).
    pool = [(r.context, max(1.0, expected_tokens(r))) for r in held] or [(request.context, tokens)]
    context = sum(c + left / 2 for c, left in pool) / len(pool)
    step = latency.decode_step_s(batch, quantized_context(context))
    start = 0.0
    if len(held) >= limit:  # full: the first of its requests to end frees a slot
        start = min(max(1.0, expected_tokens(r)) for r in held) * step
    ttft = (now - request.arrival_time) + start + latency.prefill_s(request.context)
    return Estimate(view.replica_id, start, ttft, step, ttft + tokens * step)


def _explain(slo: SLOClass, best: Estimate, replicas: int) -> str:
    if slo.e2e_s is not None:
        bound = f"e2e_s={slo.e2e_s:g}"
        figure = f"about {best.e2e_s:.2f} s end to end"
    else:
        bound = f"ttft_s={slo.ttft_s:g}, tpot_s={slo.tpot_s:g}"
        figure = f"TTFT about {best.ttft_s:.2f} s and TPOT {best.tpot_s * 1000:.0f} ms"
    wait = f", {best.start_s:.1f} s of it waiting for a slot" if best.start_s > 0 else ""
    return (
        f"SLO class {slo.name!r} ({bound}) cannot be met on any of {replicas} replica(s): "
        f"at best {figure} on {best.replica_id}{wait}"
    )
