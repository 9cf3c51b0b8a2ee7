"""All of rankserve's scheduling and engine settings, in one place.

Plain dataclasses with the defaults we ship; the CLI and the Serve config build them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cluster.policies import POLICIES
from cluster.routing import ROUTINGS


@dataclass(frozen=True, slots=True)
class SLOClass:
    """A service-level objective (Huang et al. 2025): an end-to-end bound, or a time-to-first-
    token bound plus a time-per-output-token bound. `weight`: what meeting it is worth in the
    `slo` policy's objective (1: every request counts the same)."""

    name: str
    e2e_s: float | None = None
    ttft_s: float | None = None
    tpot_s: float | None = None
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("an SLO class needs a name")
        e2e_only = self.ttft_s is None and self.tpot_s is None
        streaming = self.ttft_s is not None and self.tpot_s is not None
        if not ((self.e2e_s is not None and e2e_only) or (self.e2e_s is None and streaming)):
            raise ValueError(f"SLO class {self.name!r}: give either e2e_s, or ttft_s and tpot_s")
        bounds = (b for b in (self.e2e_s, self.ttft_s, self.tpot_s) if b is not None)
        if any(b <= 0 for b in bounds) or self.weight <= 0:
            raise ValueError(f"SLO class {self.name!r}: bounds and weight must be > 0")

    @classmethod
    def parse(cls, text: str) -> SLOClass:
        """`NAME:key=value,...`, e.g. `chat:ttft_s=1,tpot_s=0.05` (the CLI's form)."""
        name, _, rest = text.partition(":")
        values: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, value = part.partition("=")
            if not eq or key not in ("e2e_s", "ttft_s", "tpot_s", "weight"):
                raise ValueError(
                    f"SLO class {text!r}: expected NAME:e2e_s=S or NAME:ttft_s=S,tpot_s=S "
                    "(and optionally weight=W)"
                )
            try:
                values[key] = float(value)
            except ValueError:
                raise ValueError(f"SLO class {text!r}: {key}={value!r} is not a number") from None
        return cls(name.strip(), **values)

    def first_token_deadline(self, arrival: float) -> float:
        """When its first token is due: the order that earliest-deadline-first sorts by (an e2e
        class's whole answer is due then)."""
        return arrival + (self.e2e_s if self.e2e_s is not None else self.ttft_s)

    def met(self, ttft: float, tpot: float | None, e2e: float) -> bool:
        if self.e2e_s is not None:
            return e2e <= self.e2e_s
        return ttft <= self.ttft_s and (tpot is None or tpot <= self.tpot_s)


@dataclass(frozen=True, slots=True)
class SLOConfig:
    """The SLO classes requests may name (HTTP header `x-rankserve-slo-class`, body or gRPC
    field `slo`, prompt-file column `slo`); a request that names none is in `default`."""

    classes: tuple[SLOClass, ...] = (SLOClass("default", e2e_s=60.0),)
    default: str = "default"

    def __post_init__(self) -> None:
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ValueError(f"SLO class names repeat: {', '.join(names)}")
        if self.default not in names:
            raise ValueError(f"default SLO class {self.default!r} is not one of {', '.join(names)}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    def get(self, name: str | None) -> SLOClass:
        """The class of a request that names `name` (None: the default); an unknown name is a
        ValueError that lists the known ones."""
        wanted = self.default if name is None else name
        for c in self.classes:
            if c.name == wanted:
                return c
        raise ValueError(f"unknown SLO class {name!r}; known: {', '.join(self.names)}")


@dataclass(frozen=True, slots=True)
class SLOSearchConfig:
    """The `slo` policy's simulated-annealing search (docs/scheduling.md): its budget per plan,
    and the latency model's step-time profile when its host gives it none."""

    iterations: int = 300  # proposals per plan
    max_wall_ms: float | None = 4.0  # None: iterations only (deterministic for a seed)
    horizon: int = 64  # queue positions whose order is searched; the rest keep theirs
    seed: int = 0
    min_concurrency: int = 8  # lowest per-replica concurrency limit the search may set
    # Share of a request's slack that its warm start's order keeps for arrivals still to come
    # (cluster.slo_search.most_on_time): 0 lends it all to requests whose SLO is lost.
    slack_reserve: float = 0.5
    profile: str = "a100-llama3-8b"

    def __post_init__(self) -> None:
        if self.iterations < 0 or self.horizon < 2 or self.min_concurrency < 1:
            raise ValueError("slo search: iterations >= 0, horizon >= 2, min_concurrency >= 1")
        if self.max_wall_ms is not None and self.max_wall_ms <= 0:
            raise ValueError("slo search: max_wall_ms must be > 0 (or none)")
        if not 0 <= self.slack_reserve < 1:
            raise ValueError("slo search: slack_reserve must be in [0, 1)")


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    name: str = "ltr"
    # LTR starvation prevention (Fu et al. 2024): a request left waiting this many engine rounds
    # (a scheduling round of N replicas counts 1/N) is promoted for `priority_quantum` of them,
    # then demoted with its counter reset.
    starvation_threshold: int = 200
    priority_quantum: int = 10
    # A promoted slice's end sends the request back to the queue, and its resume recomputes the
    # context that was evicted meanwhile: the slice runs on, past the quantum, until that prefill
    # is at most this share of the engine time the slice had (cluster.preemption.slice_tokens).
    # None: the paper's fixed quantum.
    slice_max_overhead: float | None = 0.1
    # A bound in seconds on LTR's wait (rounds bound none): a request queued longer than this
    # since its arrival goes ahead of every score, oldest first, to its end. None: off (the
    # paper's policy); the service sets one (serve_app.config).
    ltr_max_wait_s: float | None = None
    # SSJF (Qiu et al. 2024): predicted time = predicted tokens x per-token time + constant;
    # a request that waited more than `ssjf_max_wait_s`, or more than `ssjf_wait_factor` times
    # its predicted time, goes first.
    ssjf_max_wait_s: float = 100.0
    ssjf_wait_factor: float = 10.0
    per_token_time_s: float = 0.02
    base_time_s: float = 0.05
    slo_search: SLOSearchConfig = field(default_factory=SLOSearchConfig)

    def __post_init__(self) -> None:
        POLICIES.check(self.name)
        if self.starvation_threshold < 1 or self.priority_quantum < 1:
            raise ValueError("starvation_threshold and priority_quantum must be >= 1")
        if self.ltr_max_wait_s is not None and self.ltr_max_wait_s <= 0:
            raise ValueError("ltr_max_wait_s must be > 0 (or none)")
        if self.slice_max_overhead is not None and not 0 < self.slice_max_overhead <= 1:
            raise ValueError("slice_max_overhead must be in (0, 1] (or none)")


SLO_UNREACHABLE = ("off", "reject", "demote")


@dataclass(frozen=True, slots=True)
class AdmissionConfig:
    """Bounds on the global queue (see cluster.admission); None turns a bound off. Off by
    default here, so that the simulator queues whole bursts; the service sets its own."""

    max_queued: int | None = None
    max_queue_wait_s: float | None = None  # expected drain time of the queue, at measured rate
    queue_timeout_s: float | None = None  # waiting for the first dispatch longer: 408
    # "tenant=weight" entries: a full queue sheds the tenant furthest over its weighted share
    # first. Tenants not listed weigh `default_tenant_weight`.
    tenant_shares: tuple[str, ...] = ()
    default_tenant_weight: float = 1.0
    # SLO-aware admission (cluster.slo_admission): a request whose SLO no replica could meet
    # even at the head of the queue is refused 429 (`reject`), or put in `best_effort_class`
    # (`demote`, a class of SchedulerConfig.slo); `off`: queued whatever its SLO.
    slo_unreachable: str = "off"
    best_effort_class: str | None = None

    def __post_init__(self) -> None:
        if self.max_queued is not None and self.max_queued < 0:
            raise ValueError("admission.max_queued must be >= 0")
        if self.slo_unreachable not in SLO_UNREACHABLE:
            raise ValueError(
                f"admission.slo_unreachable: {self.slo_unreachable!r} is not one of "
                f"{', '.join(SLO_UNREACHABLE)}"
            )
        if self.slo_unreachable == "demote" and not self.best_effort_class:
            raise ValueError("admission.slo_unreachable=demote needs admission.best_effort_class")
        for name in ("max_queue_wait_s", "queue_timeout_s"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"admission.{name} must be > 0")
        if self.default_tenant_weight <= 0:
            raise ValueError("admission.default_tenant_weight must be > 0")
        self.tenant_weights()  # parse errors now, not at the first full queue

    @property
    def is_bounded(self) -> bool:
        return self.max_queued is not None or self.max_queue_wait_s is not None

    def tenant_weights(self) -> dict[str, float]:
        weights = {}
        for entry in self.tenant_shares:
            tenant, eq, weight = entry.partition("=")
            try:
                value = float(weight)
            except ValueError:
                value = -1.0
            if not eq or not tenant or value <= 0:
                raise ValueError(f"admission.tenant_shares: {entry!r} is not tenant=weight > 0")
            weights[tenant] = value
        return weights


@dataclass(frozen=True, slots=True)
class AutoscalingConfig:
    """Engine replicas that follow the global queue (cluster.autoscaler). Off: the fleet keeps
    the configured count."""

    enabled: bool = False
    min_replicas: int = 1
    max_replicas: int = 8
    # Replicas are added while a request arriving now would wait longer than this in the
    # global queue (queued requests / the rate the fleet finishes requests).
    target_wait_s: float = 10.0
    # And as many replicas as hold this many requests each (dispatched or running): a
    # replica's tokens come slower the more it holds (its prompts' prefill shares its steps).
    target_ongoing_requests: float = 8.0
    # A change is made only once the need for it has lasted this long: up quickly, down slowly.
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 300.0
    # A removed replica first drains (takes no new request); what still runs on it after this
    # goes back to the queue and continues elsewhere with its prefix.
    drain_timeout_s: float = 60.0
    rate_window_s: float = 60.0  # completions (and arrivals) counted over this window
    # Scale for the load expected this far ahead: the arrival rate's trend (its last rate window
    # against the one before) carried forward. A replica asked for now serves only after the up
    # delay and its start-up; the load of now is late by that much. 0: the load of now only.
    forecast_s: float = 90.0
    interval_s: float = 5.0  # how often the host looks

    def __post_init__(self) -> None:
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ValueError("autoscaling needs 1 <= min_replicas <= max_replicas")
        positive = (
            self.target_wait_s,
            self.target_ongoing_requests,
            self.rate_window_s,
            self.interval_s,
        )
        if min(positive) <= 0:
            raise ValueError(
                "autoscaling target_wait_s, target_ongoing_requests, rate_window_s and "
                "interval_s must be > 0"
            )
        delays = (self.upscale_delay_s, self.downscale_delay_s, self.drain_timeout_s)
        if min(*delays, self.forecast_s) < 0:
            raise ValueError("autoscaling delays and forecast_s must be >= 0")


@dataclass(frozen=True, slots=True)
class PreemptionConfig:
    """Scheduler-driven preemption (`cluster.preemption`): end a running request's dispatch
    early so that a waiting request ranked well ahead of it takes its slot."""

    enabled: bool = False
    # Minimum run quantum: tokens a dispatch generates before it may be cut.
    min_run_tokens: int = 16
    max_per_request: int = 2  # a request is preempted at most this often
    # The victim's expected remaining tokens must be at least this many times the waiting one's.
    min_gain_ratio: float = 4.0
    max_per_round: int = 8  # early ends decided per scheduling round
    # The resume's cost: True, the victim's KV stays in its replica's prefix cache (vLLM's
    # default) while that replica has free blocks for it, in the share that resumes so far
    # found cached (cluster.swaps), and the rest is computed again; False (engines without
    # prefix caching), its whole context is recomputed.
    kv_retention: bool = True

    def __post_init__(self) -> None:
        if self.min_run_tokens < 1 or self.max_per_request < 0 or self.max_per_round < 1:
            raise ValueError("min_run_tokens and max_per_round must be >= 1, max_per_request >= 0")
        if self.min_gain_ratio < 1.0:
            raise ValueError("min_gain_ratio must be >= 1")


@dataclass(frozen=True, slots=True)
class PrefixRoutingConfig:
    """Prefix-cache-aware placement (cluster.prefix_routing). `prefix_aware` scores each
    replica with room by these weights: the share of the request's context cached there, its
    free KV fraction, and its free slots' fraction. `prefix_affinity` (the baseline after Ray
    Serve LLM's router, with its defaults) matches prefixes while queue lengths differ by at
    most `imbalanced_threshold`, and only when the best match covers `match_rate_threshold`
    of the prompt."""

    prefix_weight: float = 2.0
    kv_weight: float = 1.0
    queue_weight: float = 1.0
    imbalanced_threshold: int = 10
    match_rate_threshold: float = 0.1

    def __post_init__(self) -> None:
        if min(self.prefix_weight, self.kv_weight, self.queue_weight) < 0:
            raise ValueError("prefix routing weights must be >= 0")
        if not 0 <= self.match_rate_threshold <= 1:
            raise ValueError("match_rate_threshold must be in [0, 1]")


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    # A replica takes new work only while its free KV blocks, after the new prompt's blocks,
    # stay above this fraction of its cache (room for the running requests to grow).
    kv_headroom_fraction: float = 0.05
    # Requests a replica may hold beyond its running slots (queued inside the engine). Small on
    # purpose: the global queue is the only long one.
    max_engine_waiting: int = 0
    # Tokens per dispatch (slice); None runs a request to completion on one replica.
    slice_tokens: int | None = None
    # Finished answers over which the live ranking quality (scores vs produced lengths) is
    # measured for the status.
    rank_quality_window: int = 1000
    routing: str = "global"  # see cluster.routing
    routing_seed: int = 0  # power_of_two's and prefix_affinity's random choices
    prefix: PrefixRoutingConfig = field(default_factory=PrefixRoutingConfig)
    autoscaling: AutoscalingConfig = field(default_factory=AutoscalingConfig)
    slo: SLOConfig = field(default_factory=SLOConfig)
    preemption: PreemptionConfig = field(default_factory=PreemptionConfig)

    def __post_init__(self) -> None:
        ROUTINGS.check(self.routing)
        if (best_effort := self.admission.best_effort_class) is not None:
            try:
                self.slo.get(best_effort)
            except ValueError as err:
                raise ValueError(f"admission.best_effort_class: {err}") from None


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """One vLLM engine's batching limits (vLLM's names and meanings)."""

    # None: vLLM's own default for the GPU (the step-time profile knows which GPU it models).
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    block_size: int = 16
    num_kv_blocks: int | None = None  # None: derived from the step-time profile's memory model
    max_model_len: int = 8192
    # vLLM v1 caps one long prompt's chunk per step so that it cannot take the whole budget.
    long_prefill_token_threshold: int = 0  # 0: no cap beyond the step budget
    # The simulated engine's automatic prefix caching: freed full blocks stay cached and a
    # later request (a resume of the same one, or one with the same prompt) skips their
    # prefill. Off here so that earlier simulated results stay reproducible; the live vLLM
    # engines are not passed it and run with vLLM's default (CacheConfig: on).
    enable_prefix_caching: bool = False
    # KV offloading to host memory (`cluster.sim.host_tier`, vLLM's OffloadingConnector): GiB of
    # host memory per engine for freed blocks, 0 for none. Needs prefix caching.
    host_offload_gib: float = 0.0
    host_link_gb_s: float | None = None  # None: the profile GPU's PCIe link (host_tier)

    def __post_init__(self) -> None:
        if self.host_offload_gib < 0:
            raise ValueError("host_offload_gib must be >= 0")
        if self.host_offload_gib and not self.enable_prefix_caching:
            raise ValueError("host KV offload needs prefix caching (enable_prefix_caching)")
        if self.host_link_gb_s is not None and self.host_link_gb_s <= 0:
            raise ValueError("host_link_gb_s must be > 0")
