"""Scheduler-driven preemption, the decision: whether a waiting request should take the slot
of a running one, whose dispatch then ends early (it keeps its tokens and goes back to the
queue). Pure: the scheduler (`cluster.swaps`) gives the candidates and carries it out.

The cost model weighs, in seconds of request latency, the gain of the swap against the cost of
resuming the victim. Running the waiting request first saves it the victim's remaining decode
steps and costs the victim the waiting one's: net (E_victim - E_waiting) decode steps of the
victim's batch (the exchange argument behind shortest-remaining-first). Resuming costs the
prefill of the victim's uncached context, which every request of that batch waits for: all of
it, or, when its replica is expected to keep its KV, what it is not expected to keep
(`Running.retained`: all but the last block in the share that resumes so far found cached,
`cluster.swaps`). E is the expected remaining tokens: the prediction minus what the request
has, and once it ran past its prediction, as many again as it has (the ranking was wrong; a
long tail is likely, as least-attained-service assumes).

Guards: the waiting request must be ranked ahead by the policy (or the victim must have
overrun its prediction), E_victim >= min_gain_ratio x E_waiting, the victim has run its
dispatch for min_run_tokens, has been preempted fewer than max_per_request times, and is not a
starvation-promoted request (promotion keeps its slice: starvation protection is unchanged).

A planned slice end (ltr's starvation quantum) is costed the same way (`slice_tokens`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from cluster.config import PolicyConfig, PreemptionConfig
from cluster.latency_model import LatencyModel, quantized_context
from cluster.policies.base import PROMOTED_PRIORITY
from cluster.request import Request


@dataclass(frozen=True, slots=True)
class Running:
    """A running request as the decision sees it, with its replica's batch."""

    request: Request
    batch: int  # requests on its replica
    retained: int = 0  # context tokens expected to be found cached when it resumes


@dataclass(frozen=True, slots=True)
class Swap:
    victim: Request
    waiting: Request
    gain_s: float  # expected latency saved, net of the resume's cost


def expected_remaining(request: Request) -> float | None:
    """Tokens the request is expected still to generate; None without a prediction."""
    if request.predicted_tokens is None:
        return None
    left = request.max_tokens - request.generated
    if request.generated < request.predicted_tokens:
        return min(left, request.predicted_tokens - request.generated)
    return min(left, max(1, request.generated))


def may_preempt(running: Request, config: PreemptionConfig) -> bool:
    """The guards on the victim alone."""
    return (
        running.generated - running.dispatch_start_tokens >= config.min_run_tokens
        and running.scheduler_preemptions < config.max_per_request
        and running.dispatch_priority != PROMOTED_PRIORITY
    )


def choose_swap(
    waiting: Request,
    waiting_priority: float,
    running: Iterable[Running],
    config: PreemptionConfig,
    latency: LatencyModel,
) -> Swap | None:
    """The running request whose slot `waiting` should take, the best net gain first; None
    when no swap is worth it."""
    e_wait = expected_remaining(waiting)
    if e_wait is None:
        return None
    best: Swap | None = None
    for cand in running:
        victim = cand.request
        e_victim = expected_remaining(victim)
        if e_victim is None or e_victim < config.min_gain_ratio * max(1.0, e_wait):
            continue
        overran = victim.generated >= (victim.predicted_tokens or 0)
        if not (waiting_priority < victim.dispatch_priority or overran):
            continue
        if not may_preempt(victim, config):
            continue
        context = victim.prompt_tokens + victim.generated
        step_s = latency.decode_step_s(cand.batch, context)
        cost_s = latency.prefill_s(max(1, context - cand.retained)) * cand.batch
        gain_s = (e_victim - e_wait) * step_s - cost_s
        if gain_s > 0 and (best is None or gain_s > best.gain_s):
            best = Swap(victim, waiting, gain_s)
    return best


def slice_tokens(
    quantum: int | None, request: Request, batch: int, latency: LatencyModel, policy: PolicyConfig
) -> int | None:
    """The policy's slice `quantum` for `request`, joining a replica of `batch` requests (itself
    counted), run on until the resume's prefill of its whole context (likely evicted while it
    waits behind better-ranked requests) is at most `policy.slice_max_overhead` of the engine
    time the slice gets: its share, 1/batch, of each decode step."""
    overhead = policy.slice_max_overhead
    if quantum is None or overhead is None or quantum >= request.remaining_tokens:
        return quantum
    context, others = request.context, batch - 1
    mean_context = quantized_context(context)
    share_s = latency.decode_step_s(batch, mean_context) / batch
    resume_s = latency.joined_prefill_s(context, others, mean_context)
    return max(quantum, math.ceil(resume_s / (overhead * share_s)))
