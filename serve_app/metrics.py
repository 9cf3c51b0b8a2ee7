"""The ingress's metrics (docs/metrics.md) and its GET /metrics in Prometheus' text format.

Each ingress replica measures its own requests (latency histograms, outcomes; labelled with its
`ingress` id) into a registry of its own and into Ray's metrics API (served by Ray's exporter as
`ray_rankserve_*`). A scrape of GET /metrics renders those, the scheduler's families from its
status, the predictor's from its health and each live replica's vLLM metrics (one call each,
concurrently, each bounded by SOURCE_TIMEOUT_S): the cluster-wide figures are the same from every
ingress replica, the request metrics are this replica's."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from cluster.runtime.metrics_export import GAUGE, Family, scheduler_families
from cluster.runtime.names import NAMESPACE, replica_actor_name
from cluster.runtime.status import ClusterStatus
from predictor_actor.metrics import predictor_families
from serve_app.config import MetricsSettings
from serve_app.generation import GenerationFailed, GenerationRecord

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

ENGINE_PREFIX = "vllm:"  # the engine families passed on from each replica
SOURCE_TIMEOUT_S = 2.0  # a scrape goes without the parts that do not answer in this time

# Seconds; request-level latencies span milliseconds (a refusal) to minutes (long answers).
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1)
SCORE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)

_HISTOGRAMS = (
    ("queue_wait", REQUEST_BUCKETS, "From scored to the first dispatch decided"),
    ("time_to_first_token", REQUEST_BUCKETS, "From arrival to the first token"),
    ("time_per_output_token", TOKEN_BUCKETS, "Per token after the first (finished requests)"),
    ("inter_token_latency", TOKEN_BUCKETS, "Between tokens, as chunks reach the ingress"),
    ("e2e_request_latency", REQUEST_BUCKETS, "From arrival to the last token (finished)"),
    ("per_token_latency", TOKEN_BUCKETS, "End-to-end latency / output tokens (finished)"),
    ("predictor_score", SCORE_BUCKETS, "Scoring one prompt, as the ingress waits for it"),
)


def engine_families(texts: dict[str, str]) -> str:
    """The engines' own families (ENGINE_PREFIX) out of each replica's Prometheus text, merged
    into one family each, every sample labelled with its `replica`."""
    heads: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    for replica, text in texts.items():
        family = None
        for line in text.splitlines():
            if line.startswith("# "):
                parts = line.split(" ", 3)
                if len(parts) > 2 and parts[1] in ("HELP", "TYPE"):
                    family = parts[2] if parts[2].startswith(ENGINE_PREFIX) else None
                    if family is not None and len(heads.setdefault(family, [])) < 2:
                        heads[family].append(line)
                continue
            if family is None or not line:
                continue
            tag = f'replica="{replica}"'
            brace, space = line.find("{"), line.find(" ")
            if brace != -1 and brace < space:
                close = line.rfind("}")
                inner = line[brace + 1 : close]
                line = f"{line[: brace + 1]}{tag}{',' if inner else ''}{inner}{line[close:]}"
            else:
                line = f"{line[:space]}{{{tag}}}{line[space:]}"
            samples.setdefault(family, []).append(line)
    out = []
    for family, head in heads.items():
        out += head + samples.get(family, [])
    return "\n".join(out) + "\n" if out else ""


class EngineMetrics:
    """Asks each live replica for its engine's metrics (one call each, concurrently)."""

    def __init__(self) -> None:
        self._handles: dict[str, Any] = {}

    async def texts(self, replica_ids: list[str]) -> dict[str, str]:
        calls = [self._ask(rid) for rid in replica_ids]
        got = await asyncio.gather(*calls, return_exceptions=True)
        out = {}
        for rid, text in zip(replica_ids, got, strict=True):
            if isinstance(text, BaseException):
                self._handles.pop(rid, None)  # replaced or restarted: look it up again
                logger.warning("/metrics without replica %s's engine: %r", rid, text)
            else:
                out[rid] = text
        return out

    async def _ask(self, replica_id: str) -> str:
        import ray

        handle = self._handles.get(replica_id)
        if handle is None:
            name = replica_actor_name(replica_id)
            handle = self._handles[replica_id] = ray.get_actor(name, namespace=NAMESPACE)
        return await asyncio.wait_for(handle.engine_metrics.remote(), SOURCE_TIMEOUT_S)


class _Families:
    """A collector of ready-made families, so that generate_latest renders them."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


def to_prometheus(fam: Family) -> Metric:
    kind = GaugeMetricFamily if fam.kind == GAUGE else CounterMetricFamily
    out = kind(fam.name, fam.help, labels=fam.labels)
    for values, value in fam.samples:
        out.add_metric(list(values), value)
    return out


class IngressMetrics:
    """One ingress replica's metrics, labelled `ingress` with its id. `ray_metrics`: mirror
    them into Ray's metrics API and pass on the engines' own (off where no Ray worker runs,
    e.g. unit tests)."""

    def __init__(self, ingress_id: str, ray_metrics: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        tag = {"ingress": ingress_id}
        self._histograms: dict[str, tuple[Any, Any]] = {}
        for name, buckets, help in _HISTOGRAMS:
            full = f"rankserve_{name}_seconds"
            prom = Histogram(full, help, ["ingress"], buckets=buckets, registry=self.registry)
            mirror = None
            if ray_metrics:
                from ray.util.metrics import Histogram as RayHistogram

                mirror = RayHistogram(full, help, list(buckets), ("ingress",))
                mirror.set_default_tags(tag)
            self._histograms[name] = (prom.labels(ingress_id), mirror)
        self._requests = Counter(
            "rankserve_requests",
            "Requests this ingress served, by outcome (ok, an error code, or cancelled)",
            ["ingress", "outcome"],
            registry=self.registry,
        )
        self._ingress_id = ingress_id
        self._ray_requests = None
        if ray_metrics:
            from ray.util.metrics import Counter as RayCounter

            self._ray_requests = RayCounter(
                "rankserve_requests", "Requests served, by outcome", ("ingress", "outcome")
            )
            self._ray_requests.set_default_tags(tag)
        self._engines = EngineMetrics() if ray_metrics else None
        self._degraded = Gauge(
            "rankserve_predictor_degraded",
            "1 while this ingress scores by the prompt-length fallback (the predictor is away)",
            ["ingress"],
            registry=self.registry,
        ).labels(ingress_id)

    def _observe(self, name: str, *values: float) -> None:
        prom, mirror = self._histograms[name]
        for value in values:
            prom.observe(value)
            if mirror is not None:
                mirror.observe(value)

    def request_done(self, outcome: str, record: GenerationRecord) -> None:
        """One request ended: `outcome` is "ok", its error code, or "cancelled"."""
        self._requests.labels(self._ingress_id, outcome).inc()
        if self._ray_requests is not None:
            self._ray_requests.inc(1, {"outcome": outcome})
        if record.score_s is not None:
            self._observe("predictor_score", record.score_s)
            if record.dispatched is not None:
                wait = record.dispatched - record.arrival - record.score_s
                self._observe("queue_wait", max(0.0, wait))
        if record.first_token is not None:
            self._observe("time_to_first_token", record.first_token - record.arrival)
        self._observe("inter_token_latency", *record.token_gaps)
        n = len(record.output_token_ids)
        if outcome == "ok" and record.finished is not None and n:
            e2e = record.finished - record.arrival
            self._observe("e2e_request_latency", e2e)
            self._observe("per_token_latency", e2e / n)
            if n > 1 and record.first_token is not None:
                self._observe(
                    "time_per_output_token", (record.finished - record.first_token) / (n - 1)
                )

    async def track(
        self, chunks: AsyncIterator[Any], record: GenerationRecord
    ) -> AsyncIterator[Any]:
        """`chunks` (a request's stream), counted by how it ends."""
        outcome = "cancelled"  # the client went away (the stream was cancelled or closed)
        try:
            async for chunk in chunks:
                yield chunk
            outcome = "ok"
        except GenerationFailed as e:
            outcome = e.code
            raise
        except Exception:
            outcome = "internal_error"
            raise
        finally:
            self.request_done(outcome, record)

    async def scrape(
        self, status: Awaitable[ClusterStatus], health: Awaitable[dict | None], degraded: bool
    ) -> bytes:
        """GET /metrics: `status` the scheduler's, `health` the predictor's (None: no predictor
        actor), each waited for at most SOURCE_TIMEOUT_S."""
        got = await asyncio.gather(
            asyncio.wait_for(status, SOURCE_TIMEOUT_S),
            asyncio.wait_for(health, SOURCE_TIMEOUT_S),
            return_exceptions=True,
        )
        up: dict[str, bool] = {}
        answers: list[Any] = []
        for source, answer in zip(("scheduler", "predictor"), got, strict=True):
            if isinstance(answer, BaseException):
                logger.warning("/metrics without the %s's: %r", source, answer)
                answer = None
                up[source] = False
            elif answer is not None:
                up[source] = True
            answers.append(answer)
        status = answers[0]
        alive = [r.replica_id for r in status.replicas if r.alive] if status else []
        engines = await self._engines.texts(alive) if alive and self._engines else {}
        return self.render(degraded, status, answers[1], up) + engine_families(engines).encode()

    def render(
        self,
        degraded: bool,
        scheduler: ClusterStatus | None,
        predictor: dict | None,
        up: dict[str, bool],
    ) -> bytes:
        """The text of a scrape: `scheduler` and `predictor` are None when they did not answer
        in time (their families are left out; `up` says which answered)."""
        self._degraded.set(int(degraded))
        families = [
            Family("rankserve_metrics_source_up", GAUGE, "1 if the source answered", ("source",))
        ]
        for source, answered in up.items():
            families[0].add(int(answered), source)
        if scheduler is not None:
            families += scheduler_families(scheduler)
        if predictor is not None:
            families += predictor_families(predictor)
        ours = generate_latest(self.registry)
        return ours + generate_latest(_Families(map(to_prometheus, families)))


class MetricsOff:
    """What the ingress keeps with metrics.enabled false: nothing. A request's stream passes
    through untouched, and a scrape says why it is empty."""

    async def scrape(self, status: Awaitable[Any], health: Awaitable[Any], degraded: bool) -> bytes:
        for source in (status, health):  # made by the caller: not waited for
            if inspect.iscoroutine(source):
                source.close()
        return b"# rankserve: metrics are off (metrics.enabled: false)\n"

    def track(self, chunks: AsyncIterator[Any], record: GenerationRecord) -> AsyncIterator[Any]:
        return chunks


def ingress_metrics(settings: MetricsSettings, ingress_id: str) -> IngressMetrics | MetricsOff:
    return IngressMetrics(ingress_id) if settings.enabled else MetricsOff()
