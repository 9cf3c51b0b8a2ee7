"""Scheduler-driven preemptions under way: the victims whose dispatches the engines are asked to
end early (`EarlyEnd`), and the waiting request each freed slot is promised to.

An engine ends such a dispatch after the victim's next token and reports it ended with
`FinishReason.PREEMPT`; the scheduler requeues the victim with its tokens (as at a slice end),
and the next round gives the promised request that replica before anything else, so that the
victim, which the policy may still rank ahead, does not take its slot back.

The resume's cost counts the victim's context as retained when its replica is expected to keep
its blocks longer than preempted requests have waited to resume so far (`resume_wait_s`, a
moving average; unknown before the first resume, and nothing counts as kept until then;
`cluster.kv_churn`), and then in the share that such resumes found cached (`retained_share`,
learned from the engines' reports, 1 before any). Under KV pressure the requests dispatched
behind a victim fill its replica again and evict its blocks before its turn comes. A victim
counted so waits for a slot on its own replica while its blocks are expected there: resumed
elsewhere, it would find none.

A preempted request is then ranked with what it has (`order`): behind every queued request
expected min_gain_ratio times shorter than its expected remaining, else where the policy puts
it. Starvation protection is unchanged: once the policy promotes it, it goes first again."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from cluster.config import SchedulerConfig
from cluster.kv_churn import KvChurn
from cluster.latency_model import LatencyModel
from cluster.policies.base import PROMOTED_PRIORITY, RequestQueue
from cluster.preemption import Running, choose_swap, expected_remaining
from cluster.replicas import ReplicaView
from cluster.request import Request, RequestState
from cluster.routing import Routing

RETENTION_LEARNING_RATE = 0.1  # weight of each resume in `retained_share` and `resume_wait_s`


@dataclass(frozen=True, slots=True)
class EarlyEnd:
    """A decision for an engine: end this request's dispatch after its next token."""

    request_id: str
    replica_id: str


class Swaps:
    def __init__(
        self,
        config: SchedulerConfig,
        latency: LatencyModel | None,
        routing: Routing,
        previous: Swaps | None = None,
    ) -> None:
        """`config`: the scheduler's, of which `preemption` is this decider's. `latency`: the
        engines' step times (None: those of the profile the SLO search names, loaded at first
        use). `routing`: the scheduler's. `previous`: the decider of the settings these
        replace, whose count and what it learned of the engines go on."""
        self.config = config.preemption
        self.routing = routing
        self._latency = latency
        self._profile = config.policy.slo_search.profile
        self.count = previous.count if previous else 0  # preemptions decided
        # victim id -> (victim, its dispatch count, its replica, the waiting request)
        self._pending: dict[str, tuple[Request, int, str, Request]] = {}
        self._ends: list[EarlyEnd] = []
        # of a preempted context, found cached when it resumed
        self.retained_share = previous.retained_share if previous else 1.0
        # victim id -> (victim, its resuming dispatch's number, context it could find cached)
        self._resumes: dict[str, tuple[Request, int, int]] = {}
        self.churn = previous.churn if previous else KvChurn()
        # seconds from a preemption's decision to its victim's next dispatch; None before any
        self.resume_wait_s: float | None = previous.resume_wait_s if previous else None
        # victim id -> (victim, its replica, when its preemption was decided, until when it
        # waits for that replica's room rather than move: while its blocks are likely kept)
        self._paused: dict[str, tuple[Request, str, float, float]] = {}

    def freed(self, replicas: list[ReplicaView]) -> Iterator[tuple[Request, ReplicaView]]:
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
            if self.routing.choose([view], waiting) is not None:
                yield waiting, view

    def order(
        self,
        queue: RequestQueue,
        priority: Callable[[Request], float],
        replicas: list[ReplicaView],
        now: float,
    ) -> Iterator[Request]:
        """The queue's policy order at `now`, with preempted requests moved behind the much
        shorter ones, and left out while they wait for room on the replica that keeps their KV
        (with preemption off, the policy order itself)."""
        ordered = queue.ordered(now)
        if not self.config.enabled:
            yield from ordered
            return
        homes = {v.replica_id: v for v in replicas}
        held: list[tuple[float, Request]] = []  # preempted, waiting for their place
        for request in ordered:
            if self._waits_for_home(request, homes, priority, now):
                continue
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
        now: float,
    ) -> None:
        """Decide swaps for the best-ranked waiting requests that no replica has room for
        (`queued`, in policy order; `priority`: the policy's), at most
        max_per_round, stopping at the first that gains nothing."""
        promised = {id(w) for *_, w in self._pending.values()}
        for pending in (self._resumes, self._paused):
            for rid, (victim, *_) in list(pending.items()):
                if victim.state.is_terminal:  # ended (aborted, failed) before it resumed
                    del pending[rid]
        homes = {v.replica_id: v for v in replicas}
        kept: dict[str, int] = {}  # victim id -> context its replica is expected still to hold
        running: list[Running] = []
        wait = self._expected_resume_wait_s(now)
        for view in replicas:
            keeps = self._keeps_paused_kv(view, wait, now)
            for r in _running_on(view, requests):
                if r.request_id not in self._pending:
                    kept[r.request_id] = max(1, r.context - view.block_size) if keeps else 0
                    retained = round(self.retained_share * kept[r.request_id])
                    running.append(Running(r, len(view.assigned), retained))
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
            home = homes[victim.replica_id]
            # Kept, it waits for its replica while its blocks are expected there (at most the
            # churn's window: past it, the rate measured says nothing).
            keeps_s = min(self.churn.keeps_for_s(home, now), self.churn.window_s)
            hold_s = keeps_s if kept[victim.request_id] else 0.0
            self._paused[victim.request_id] = (victim, home.replica_id, now, now + hold_s)
            if expected := kept[victim.request_id]:  # the share learned is of these
                self._resumes[victim.request_id] = (victim, victim.num_dispatches + 1, expected)
            running = [c for c in running if c.request is not victim]

    def dispatched(self, request: Request, replica_id: str, now: float) -> None:
        """The scheduler sent `request` to the replica: KV it will fill there, and, for a
        preempted request, how long it waited to resume."""
        if not self.config.enabled:
            return
        e = expected_remaining(request)
        answer = request.remaining_tokens if e is None else e
        self.churn.dispatched(replica_id, request.context + answer, now)
        if (paused := self._paused.pop(request.request_id, None)) is not None:
            wait, last = now - paused[2], self.resume_wait_s
            self.resume_wait_s = (
                wait if last is None else last + RETENTION_LEARNING_RATE * (wait - last)
            )

    def found_cached(self, request: Request, tokens: int) -> None:
        """An engine admitted `request` and found `tokens` of its context cached: at a
        preempted request's resume, that updates `retained_share` (a moving average)."""
        resume = self._resumes.get(request.request_id)
        if resume is None or resume[1] != request.num_dispatches:
            return
        del self._resumes[request.request_id]
        share = min(1.0, tokens / resume[2])
        self.retained_share += RETENTION_LEARNING_RATE * (share - self.retained_share)

    def _waits_for_home(
        self,
        request: Request,
        homes: dict[str, ReplicaView],
        priority: Callable[[Request], float],
        now: float,
    ) -> bool:
        """A preempted request whose replica likely keeps its KV waits for a slot to run in
        there, rather than move and compute it all again, until its blocks are likely gone (or
        the policy promotes it, or the replica leaves)."""
        paused = self._paused.get(request.request_id)
        if paused is None or now >= paused[3] or priority(request) == PROMOTED_PRIORITY:
            return False
        home = homes.get(paused[1])
        return home is not None and not self.routing.fits(home, request)

    def _keeps_paused_kv(self, view: ReplicaView, wait_s: float | None, now: float) -> bool:
        """Whether a victim's replica is expected still to hold its context (all but the last
        block) when it resumes: when it keeps a paused request's blocks longer than preempted
        requests wait to resume (`wait_s`)."""
        if not self.config.kv_retention or wait_s is None:
            return False
        return wait_s < self.churn.keeps_for_s(view, now)

    def _expected_resume_wait_s(self, now: float) -> float | None:
        """The resumes' learned wait, or, when the victims still waiting have waited longer on
        average, that: a long wait is measured only once it is over, and the decisions taken
        meanwhile would go on assuming the short ones that ended first."""
        if self.resume_wait_s is None or not self._paused:
            return self.resume_wait_s
        waited = sum(now - paused_at for _, _, paused_at, _ in self._paused.values())
        return max(self.resume_wait_s, waited / len(self._paused))

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
