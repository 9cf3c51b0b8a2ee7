"""Scheduler-driven preemptions under way: the victims whose dispatches the engines are asked to
end early (`EarlyEnd`), and the waiting request each freed slot is promised to.

An engine ends such a dispatch after the victim's next token and reports it ended with
`FinishReason.PREEMPT`; the scheduler requeues the victim with its tokens (as at a slice end),
and the next round gives the promised request that replica before anything else, so that the
victim, which the policy may still rank ahead, does not take its slot back.

The resume's cost counts the victim's context as retained in the proportion that resumes were
found cached so far (`retained_share`, learned from the engines' reports, 1 before any): under
KV pressure the queue behind a victim fills its replica again and evicts its blocks.

A preempted request is then ranked with what it has (`order`): behind every queued request
expected min_gain_ratio times shorter than its expected remaining, else where the policy puts
it. Starvation protection is unchanged: once the policy promotes it, it goes first again."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from cluster.config import PreemptionConfig
from cluster.latency_model import LatencyModel
from cluster.policies.base import PROMOTED_PRIORITY
from cluster.preemption import Running, choose_swap, expected_remaining
from cluster.replicas import ReplicaView
from cluster.request import Request, RequestState
from cluster.routing import Routing

RETENTION_LEARNING_RATE = 0.1  # weight of each resume in `retained_share`


@dataclass(frozen=True, slots=True)
class EarlyEnd:
    """A decision for an engine: end this request's dispatch after its next token."""

    request_id: str
    replica_id: str


class Swaps:
    def __init__(
        self,
        config: PreemptionConfig,
        latency: LatencyModel | None,
        profile: str,
        previous: Swaps | None = None,
    ) -> None:
        """`latency`: the engines' step times (None: those of the named `profile`, loaded
        at first use). `previous`: the decider of the settings these replace, whose count and
        learned retained share go on (a counter, and a property of the engines)."""
        self.config = config
        self._latency = latency
        self._profile = profile
        self.count = previous.count if previous else 0  # preemptions decided
        # victim id -> (victim, its dispatch count, its replica, the waiting request)
        self._pending: dict[str, tuple[Request, int, str, Request]] = {}
        self._ends: list[EarlyEnd] = []
        # of a preempted context, found cached when it resumed
        self.retained_share = previous.retained_share if previous else 1.0
        # victim id -> (victim, its resuming dispatch's number, context it could find cached)
        self._resumes: dict[str, tuple[Request, int, int]] = {}

    def freed(
        self, replicas: list[ReplicaView], routing: Routing
    ) -> Iterator[tuple[Request, ReplicaView]]:
        """(waiting request, replica) for each swap whose victim has left its replica, when the
        request is still queued and fits there; those swaps are done. Lazy: the caller
        dispatches each before the next is checked."""
        serving = {v.replica_id: v for v in replicas}
        for victim_id, (victim, dispatches, view_id, waiting) in list(self._pending.items()):
            same = victim.num_dispatches == dispatches and victim.replica_id == view_id
            if same and not victim.state.is_terminal:
                continue
            del self._pending[victim_id]
            view = serving.get(view_id)
            if waiting.state is not RequestState.QUEUED or view is None:
                continue
            if routing.choose([view], waiting) is not None:
                yield waiting, view

    def order(
        self, ordered: Iterator[Request], priority: Callable[[Request], float]
    ) -> Iterator[Request]:
        """The queue's policy order with preempted requests moved behind the much shorter ones
        (with preemption off, the policy order itself)."""
        if not self.config.enabled:
            yield from ordered
            return
        held: list[tuple[float, Request]] = []  # preempted, waiting for their place
        for request in ordered:
            e = expected_remaining(request)
            if held and e is not None:
                ratio = self.config.min_gain_ratio
                keep = [(ev, v) for ev, v in held if ev >= ratio * max(1.0, e)]
                for ev, v in held:
                    if ev < ratio * max(1.0, e):
                        yield v
                held = keep
            deferrable = request.scheduler_preemptions and priority(request) != PROMOTED_PRIORITY
            if deferrable and e is not None:
                held.append((e, request))
            else:
                yield request
        for _, v in held:
            yield v

    def consider(
        self,
        queued: Iterator[Request],
        priority: Callable[[Request], float],
        replicas: list[ReplicaView],
        requests: dict[str, Request],
    ) -> None:
        """Decide swaps for the best-ranked waiting requests that no replica has room for
        (`queued`, in policy order; `priority`: the policy's), at most
        max_per_round, stopping at the first that gains nothing."""
        promised = {id(w) for *_, w in self._pending.values()}
        for rid, (victim, *_) in list(self._resumes.items()):
            if victim.state.is_terminal:  # ended (aborted, failed) before it resumed
                del self._resumes[rid]
        block_sizes = {v.replica_id: v.block_size for v in replicas}
        running = [
            Running(r, len(view.assigned), self._retained(r, view))
            for view in replicas
            for r in _running_on(view, requests)
            if r.request_id not in self._pending
        ]
        decided = 0
        for waiting in queued:
            if decided >= self.config.max_per_round or not running:
                break
            if id(waiting) in promised:
                continue
            swap = choose_swap(waiting, priority(waiting), running, self.config, self.latency)
            if swap is None:
                break
            victim = swap.victim
            victim.scheduler_preemptions += 1
            self.count += 1
            decided += 1
            self._pending[victim.request_id] = (
                victim,
                victim.num_dispatches,
                victim.replica_id,
                waiting,
            )
            self._ends.append(EarlyEnd(victim.request_id, victim.replica_id))
            whole = victim.context - block_sizes[victim.replica_id]  # all but the last block
            self._resumes[victim.request_id] = (victim, victim.num_dispatches + 1, max(1, whole))
            running = [c for c in running if c.request is not victim]

    def found_cached(self, request: Request, tokens: int) -> None:
        """An engine admitted `request` and found `tokens` of its context cached: at a
        preempted request's resume, that updates `retained_share` (a moving average)."""
        resume = self._resumes.get(request.request_id)
        if resume is None or resume[1] != request.num_dispatches:
            return
        del self._resumes[request.request_id]
        share = min(1.0, tokens / resume[2])
        self.retained_share += RETENTION_LEARNING_RATE * (share - self.retained_share)

    def _retained(self, victim: Request, view: ReplicaView) -> int:
        """Context tokens the victim's replica is expected still to hold when it resumes: while
        the replica has free blocks for as much again (freed blocks are evicted only when an
        allocation needs them), all but the last block in the share that resumes found, else
        none."""
        context = victim.context
        if not self.config.kv_retention or view.free_blocks < view.blocks_for(context):
            return 0
        return round(self.retained_share * max(0, context - view.block_size))

    @property
    def latency(self) -> LatencyModel:
        if self._latency is None:
            self._latency = LatencyModel.named(self._profile)
        return self._latency

    def take_early_ends(self) -> list[EarlyEnd]:
        ends, self._ends = self._ends, []
        return ends


def _running_on(view: ReplicaView, requests: dict[str, Request]) -> Iterable[Request]:
    for rid in sorted(view.assigned):  # a set: sorted, for a reproducible choice
        request = requests[rid]
        if request.state is RequestState.RUNNING:
            yield request
