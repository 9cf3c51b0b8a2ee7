"""The metrics' rendering (docs/metrics.md): a real scheduling core driven through dispatches,
slices, preemptions, failures and refusals, its status rendered as GET /metrics renders it, and
the text read back with Prometheus' own parser."""

from __future__ import annotations

import asyncio
import math
import re
from pathlib import Path

import pytest

pytest.importorskip("prometheus_client")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from cluster.config import AdmissionConfig, EngineConfig, SLOClass, SLOConfig  # noqa: E402
from cluster.events import FinishReason  # noqa: E402
from cluster.replicas import ReplicaLoad  # noqa: E402
from cluster.runtime.fleet import ReplicaFleet  # noqa: E402
from cluster.runtime.protocol import ReplicaInfo  # noqa: E402
from cluster.runtime.spec import ReplicaConfig, replica_specs  # noqa: E402
from cluster.runtime.status import EndedTotals, cluster_status  # noqa: E402
from predictor_actor.batching import BatchingPredictor, PredictorConfig  # noqa: E402
from serve_app.generation import GenerationFailed, GenerationRecord  # noqa: E402
from serve_app.metrics import IngressMetrics, engine_families  # noqa: E402
from tests import dashboard  # noqa: E402
from tests.support import events, make_request, make_scheduler  # noqa: E402

ING = (("ingress", "i1"),)
SLOS = SLOConfig((SLOClass("chat", ttft_s=1.0, tpot_s=0.1), SLOClass("batch", e2e_s=600)), "chat")


def samples(text: bytes) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, and every family name under ("family", name)."""
    out: dict = {}
    for fam in text_string_to_metric_families(text.decode()):
        out[("family", fam.name)] = fam.type
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def fleet_of(n: int) -> ReplicaFleet:
    specs = replica_specs("/m", EngineConfig(), ReplicaConfig(), n)
    return ReplicaFleet(specs, lambda: None, lambda _: None, lambda *_: None)


@pytest.fixture
def status():
    """Two replicas of 100 KV blocks; requests through every ending the metrics count."""
    core, _ = make_scheduler("fcfs", slo=SLOS, admission=AdmissionConfig(max_queued=4))
    fleet = fleet_of(2)
    a, b = list(fleet.specs)
    for rid in (a, b):
        core.add_replica(rid, max_num_seqs=2, total_kv_blocks=100, block_size=16)
        fleet.infos[rid] = ReplicaInfo(rid, 2, 100, 16, 1024, 512)
        fleet.handles[rid] = object()  # up
    ended = EndedTotals()

    def forget(requests):
        for r in requests:
            core.forget(r.request_id)
            ended.record(r)

    for i in range(4):  # dispatched: 2 slots x 2 replicas
        core.admit(make_request(f"r{i}", output=8, slo="batch" if i % 2 else None))
    dispatched = {d.request.request_id: d.replica_id for d in core.schedule()}
    assert len(dispatched) == 4
    for i in range(4, 9):  # 4 queued, the 5th refused: the queue is full
        core.admit(make_request(f"r{i}", output=8, slo="batch" if i % 2 else None))
    r0, r1, r2, r3 = sorted(dispatched)
    on = dispatched.get
    core.apply(events(on(r0), started=[r0], tokens={r0: 3}))
    core.apply(events(on(r0), preempted=[r0]))
    forget(core.apply(events(on(r0), started=[r0], tokens={r0: 5}, ended={r0: FinishReason.STOP})))
    forget(core.apply(events(on(r1), failed={r1: "RuntimeError: engine"})))
    core.apply(events(on(r2), started=[r2], tokens={r2: 2}, ended={r2: FinishReason.SLICE}))
    core.abort(r3)
    forget([core.get(r3)])
    load = ReplicaLoad(a, 1, 0, 75, 100)  # running, waiting, free and total KV blocks
    core.apply(events(a, load=load))
    fleet.loads[a] = load
    del fleet.handles[b]  # b is down
    return cluster_status(core, fleet, ended), (a, b)


def test_the_scheduler_status_renders_as_prometheus_metrics(status):
    cluster, (a, b) = status
    got = samples(
        IngressMetrics("i1", ray_metrics=False).render(False, cluster, None, {"scheduler": 1})
    )
    q = cluster.queued
    assert q == 5  # 4 never dispatched + the sliced one back in the queue
    depth = {k[1]: v for k, v in got.items() if k[0] == "rankserve_queue_depth"}
    assert sum(depth.values()) == q
    assert set(depth) == {(("policy", "fcfs"), ("slo", c)) for c in ("chat", "batch")}
    assert got[("rankserve_dispatches_total", ())] == 4
    assert got[("rankserve_slices_total", ())] == 1
    assert got[("rankserve_preemptions_total", ())] == 1
    assert got[("rankserve_requests_finished_total", ())] == 1
    assert got[("rankserve_request_failures_total", (("reason", "engine_error"),))] == 1
    assert got[("rankserve_request_failures_total", (("reason", "aborted"),))] == 1
    assert got[("rankserve_admission_rejections_total", (("reason", "queue_full"),))] == 1
    assert got[("rankserve_replica_kv_usage", (("replica", a),))] == pytest.approx(0.25)
    assert got[("rankserve_replica_running", (("replica", a),))] == 1
    assert got[("rankserve_replica_up", (("replica", b),))] == 0
    assert math.isnan(got[("rankserve_rank_quality_kendall_tau", ())])  # too few answers yet
    assert got[("rankserve_metrics_source_up", (("source", "scheduler"),))] == 1
    assert got[("family", "rankserve_dispatches")] == "counter"
    assert got[("family", "rankserve_queue_depth")] == "gauge"


def test_slo_admission_refusals_and_demotions_are_counted():
    slos = SLOConfig((*SLOS.classes, SLOClass("tight", e2e_s=0.5)), "chat")
    rendered = {}
    for mode in ("reject", "demote"):
        admission = AdmissionConfig(slo_unreachable=mode, best_effort_class="batch")
        core, _ = make_scheduler("fcfs", slo=slos, admission=admission)
        core.add_replica("a", max_num_seqs=1, total_kv_blocks=1000, block_size=16)
        core.admit(make_request("long", output=2000))
        core.schedule()  # the only slot is taken for a while
        core.admit(make_request("t", output=100, slo="tight"))
        status = cluster_status(core, fleet_of(1), EndedTotals())
        rendered[mode] = samples(
            IngressMetrics("i1", ray_metrics=False).render(False, status, None, {})
        )
    reason = ("rankserve_admission_rejections_total", (("reason", "slo_unreachable"),))
    demoted = ("rankserve_slo_demotions_total", ())
    assert rendered["reject"][reason] == 1 and rendered["reject"][demoted] == 0
    assert reason not in rendered["demote"] and rendered["demote"][demoted] == 1


def test_request_latencies_are_observed_by_outcome():
    metrics = IngressMetrics("i1", ray_metrics=False)
    record = GenerationRecord(prompt_tokens=4, arrival=100.0, score_s=0.002)
    record.dispatched = 100.5
    for t in (101.0, 101.2, 101.8):  # 1 token, then 1, then 3 in one chunk
        record.tokens_arrived(3 if t == 101.8 else 1, t)
    record.output_token_ids = list(range(5))
    record.finished = 101.8

    async def ok():
        async for _ in metrics.track(_chunks(2), record):
            pass

    async def refused():
        async for _ in metrics.track(_chunks(0, GenerationFailed("full", 429, "queue_full")), rec):
            pass

    rec = GenerationRecord(prompt_tokens=4)
    asyncio.run(ok())
    with pytest.raises(GenerationFailed):
        asyncio.run(refused())
    got = samples(metrics.render(True, None, None, {"scheduler": False}))
    assert got[("rankserve_requests_total", (*ING, ("outcome", "ok")))] == 1
    assert got[("rankserve_requests_total", (*ING, ("outcome", "queue_full")))] == 1
    assert got[("rankserve_time_to_first_token_seconds_count", ING)] == 1
    assert got[("rankserve_time_to_first_token_seconds_sum", ING)] == pytest.approx(1.0)
    assert got[("rankserve_queue_wait_seconds_sum", ING)] == pytest.approx(0.498)
    assert got[("rankserve_inter_token_latency_seconds_count", ING)] == 4
    assert got[("rankserve_inter_token_latency_seconds_sum", ING)] == pytest.approx(0.8)
    assert got[("rankserve_time_per_output_token_seconds_sum", ING)] == pytest.approx(0.2)
    assert got[("rankserve_e2e_request_latency_seconds_sum", ING)] == pytest.approx(1.8)
    assert got[("rankserve_per_token_latency_seconds_sum", ING)] == pytest.approx(0.36)
    assert got[("rankserve_predictor_degraded", ING)] == 1
    assert got[("rankserve_metrics_source_up", (("source", "scheduler"),))] == 0
    assert ("rankserve_queue_depth", ()) not in got  # the scheduler did not answer


async def _chunks(n: int, error: Exception | None = None):
    for i in range(n):
        yield i
    if error is not None:
        raise error


def test_a_scrape_goes_without_a_source_that_does_not_answer(monkeypatch, status):
    monkeypatch.setattr("serve_app.metrics.SOURCE_TIMEOUT_S", 0.05)
    cluster, _ = status
    health = BatchingPredictor(PredictorConfig(model_dir="/nonexistent")).health()

    async def slow():
        await asyncio.sleep(10)

    async def ready(value):
        return value

    metrics = IngressMetrics("i1", ray_metrics=False)
    got = samples(asyncio.run(metrics.scrape(slow(), ready(health), False)))
    up = {k[1][0][1]: v for k, v in got.items() if k[0] == "rankserve_metrics_source_up"}
    assert up == {"scheduler": 0, "predictor": 1}
    assert ("rankserve_dispatches_total", ()) not in got
    assert got[("rankserve_predictor_model_fallback", ())] == 1  # the model did not load
    assert not any(k[0] == "rankserve_predictor_encoding" for k in got)  # nor any encoder
    assert got[("rankserve_predictor_batches_total", ())] == 0
    got = samples(asyncio.run(metrics.scrape(ready(cluster), ready(None), False)))
    up = {k[1][0][1]: v for k, v in got.items() if k[0] == "rankserve_metrics_source_up"}
    assert up == {"scheduler": 1}  # no predictor actor (the heuristic scorer): nothing to say
    assert got[("rankserve_dispatches_total", ())] == 4


def test_engine_metrics_are_merged_and_labelled_by_replica():
    from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest

    texts = {}
    for replica, running in (("replica-0", 2), ("replica-1", 5)):
        registry = CollectorRegistry()
        g = Gauge(
            "vllm:num_requests_running", "running", ["model_name", "engine"], registry=registry
        )
        g.labels("tiny", "0").set(running)
        Histogram("vllm:e2e_request_latency_seconds", "e2e", registry=registry).observe(0.3)
        Gauge("process_open_fds", "not the engine's", registry=registry).set(9)
        texts[replica] = generate_latest(registry).decode()
    got = samples(engine_families(texts).encode())
    running = {
        dict(k[1])["replica"]: v for k, v in got.items() if k[0] == "vllm:num_requests_running"
    }
    assert running == {"replica-0": 2, "replica-1": 5}
    count = ("vllm:e2e_request_latency_seconds_count", (("replica", "replica-1"),))
    assert got[count] == 1
    assert not any(k[0] == "process_open_fds" for k in got)


def test_the_dashboard_loads_and_reads_only_documented_metrics():
    """Each panel queries at least one rankserve or vLLM metric, and docs/metrics.md documents
    every one the dashboard reads (the e2e test checks them against a live scrape)."""
    docs = (Path(__file__).resolve().parents[1] / "docs" / "metrics.md").read_text()
    documented = set(re.findall(r"`((?:rankserve_|vllm:)[a-zA-Z0-9_:]+)`", docs))
    for panel in dashboard.panels():
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert dashboard.metrics_named(target["expr"]), (panel["title"], target["expr"])
    read = {re.sub(r"_(bucket|sum|count)$", "", m) for m in dashboard.dashboard_metrics()}
    assert read - documented == set()
    assert len(read) >= 30


def test_metrics_off_keeps_nothing_and_says_so():
    from serve_app.config import MetricsSettings
    from serve_app.metrics import MetricsOff, ingress_metrics

    assert isinstance(ingress_metrics(MetricsSettings(), "i1"), IngressMetrics)
    off = ingress_metrics(MetricsSettings(enabled=False), "i1")
    assert isinstance(off, MetricsOff)
    chunks = object()
    assert off.track(chunks, GenerationRecord(prompt_tokens=1)) is chunks  # not wrapped

    async def never():  # a source the off scrape must not wait for
        await asyncio.sleep(3600)

    text = asyncio.run(asyncio.wait_for(off.scrape(never(), never(), False), 1))
    assert text.startswith(b"# rankserve: metrics are off") and samples(text) == {}
